// What differs between release lines: how validate is called, and the retry decision.
// Argo Workflows v3.1 (KFP 1.8): validate returns (conditions, error) and takes the executor
// (KFP 1.8 installs docker); templates are validated without options and there is no submit
// option (the server validates with empty options); RetryStrategy has no expression: the
// release drops it, and the retry policy alone decides.
package main

import (
	"fmt"

	argoerrors "github.com/argoproj/argo-workflows/v3/errors"
	wfv1 "github.com/argoproj/argo-workflows/v3/pkg/apis/workflow/v1alpha1"
	errorsutil "github.com/argoproj/argo-workflows/v3/util/errors"
	"github.com/argoproj/argo-workflows/v3/util/intstr"
	"github.com/argoproj/argo-workflows/v3/workflow/common"
	"github.com/argoproj/argo-workflows/v3/workflow/validate"
)

// The options each caller passes: `argo lint --offline` (pkg/apiclient offline clients), the
// argo server on submit, and the controller once before it runs a Workflow.
var (
	lintOpts       = validate.ValidateOpts{Lint: true, ContainerRuntimeExecutor: executor}
	submitOpts     = validate.ValidateOpts{ContainerRuntimeExecutor: executor}
	controllerOpts = validate.ValidateOpts{ContainerRuntimeExecutor: executor}
)

const executor = common.ContainerRuntimeExecutorDocker

// errorOnly drops the conditions (warnings) that validate returned before v3.4.
func errorOnly(_ *wfv1.Conditions, err error) error { return err }

func validateWorkflow(store *templates, workflow *wfv1.Workflow) map[string]func() error {
	run := func(opts validate.ValidateOpts) func() error {
		return func() error {
			return errorOnly(validate.ValidateWorkflow(store.namespacedGetter(), store.clusterGetter(), workflow.DeepCopy(), opts))
		}
	}
	return map[string]func() error{"lint": run(lintOpts), "submit": run(submitOpts), "controller": run(controllerOpts)}
}

func validateWorkflowTemplate(store *templates, template *wfv1.WorkflowTemplate) map[string]func() error {
	run := func() error {
		return errorOnly(validate.ValidateWorkflowTemplate(store.namespacedGetter(), store.clusterGetter(), template.DeepCopy()))
	}
	// One validation for templates in this release: linting and creating are the same.
	return map[string]func() error{"lint": run, "create": run}
}

func validateClusterWorkflowTemplate(store *templates, template *wfv1.ClusterWorkflowTemplate) map[string]func() error {
	run := func() error {
		return errorOnly(validate.ValidateClusterWorkflowTemplate(store.namespacedGetter(), store.clusterGetter(), template.DeepCopy()))
	}
	return map[string]func() error{"lint": run, "create": run}
}

// decide follows the controller's processNodeRetries for a node whose one attempt so far
// ended as `last`: the retry policy's phase gate (an empty policy means OnFailure), CanRetry
// and the limit. This release has no retry expression to evaluate.
func decide(strategy wfv1.RetryStrategy, last wfv1.NodeStatus) decision {
	attempts := int32(1)
	var onFailed, onError bool
	switch strategy.RetryPolicy {
	case wfv1.RetryPolicyAlways:
		onFailed, onError = true, true
	case wfv1.RetryPolicyOnError:
		onError = true
	case wfv1.RetryPolicyOnTransientError:
		if last.FailedOrError() && errorsutil.IsTransientErr(argoerrors.InternalError(last.Message)) {
			onFailed, onError = true, true
		}
	case wfv1.RetryPolicyOnFailure, "":
		onFailed = true
	default:
		return decision{Error: fmt.Sprintf("%s is not a valid RetryPolicy", strategy.RetryPolicy)}
	}
	if (last.Phase == wfv1.NodeFailed && !onFailed) || (last.Phase == wfv1.NodeError && !onError) {
		return decision{Reason: "retryPolicy " + policyName(strategy) + " does not retry " + string(last.Phase)}
	}
	if !last.CanRetry() {
		return decision{Reason: "node cannot be retried"}
	}
	limit, err := intstr.Int32(strategy.Limit)
	if err != nil {
		return decision{Error: err.Error()}
	}
	if strategy.Limit != nil && limit != nil && attempts > *limit {
		return decision{Reason: "no more retries left"}
	}
	return decision{Retry: true, Reason: "retryPolicy " + policyName(strategy) + " retries " + string(last.Phase)}
}

func policyName(strategy wfv1.RetryStrategy) string {
	if strategy.RetryPolicy == "" {
		return "(empty: OnFailure)"
	}
	return string(strategy.RetryPolicy)
}
