// What differs between release lines: how validate is called, and the retry decision.
// Argo Workflows v3.4: validate returns an error only; the retry expression is evaluated
// before the retry policy, and an empty policy means OnFailure even with an expression.
package main

import (
	"fmt"
	"strconv"

	argoerrors "github.com/argoproj/argo-workflows/v3/errors"
	wfv1 "github.com/argoproj/argo-workflows/v3/pkg/apis/workflow/v1alpha1"
	errorsutil "github.com/argoproj/argo-workflows/v3/util/errors"
	"github.com/argoproj/argo-workflows/v3/util/expr/argoexpr"
	"github.com/argoproj/argo-workflows/v3/util/expr/env"
	"github.com/argoproj/argo-workflows/v3/util/intstr"
	"github.com/argoproj/argo-workflows/v3/workflow/common"
	"github.com/argoproj/argo-workflows/v3/workflow/validate"
)

// The options each caller passes: `argo lint --offline` (pkg/apiclient offline clients), the
// argo server on submit, and the controller once before it runs a Workflow.
var (
	lintOpts       = validate.ValidateOpts{Lint: true}
	submitOpts     = validate.ValidateOpts{Submit: true}
	controllerOpts = validate.ValidateOpts{}
)

func validateWorkflow(store *templates, workflow *wfv1.Workflow) map[string]func() error {
	run := func(opts validate.ValidateOpts) func() error {
		return func() error {
			return validate.ValidateWorkflow(store.namespacedGetter(), store.clusterGetter(), workflow.DeepCopy(), opts)
		}
	}
	return map[string]func() error{"lint": run(lintOpts), "submit": run(submitOpts), "controller": run(controllerOpts)}
}

func validateWorkflowTemplate(store *templates, template *wfv1.WorkflowTemplate) map[string]func() error {
	run := func(opts validate.ValidateOpts) func() error {
		return func() error {
			return validate.ValidateWorkflowTemplate(store.namespacedGetter(), store.clusterGetter(), template.DeepCopy(), opts)
		}
	}
	// The server validates a created template with empty options.
	return map[string]func() error{"lint": run(lintOpts), "create": run(validate.ValidateOpts{})}
}

func validateClusterWorkflowTemplate(store *templates, template *wfv1.ClusterWorkflowTemplate) map[string]func() error {
	run := func(opts validate.ValidateOpts) func() error {
		return func() error {
			return validate.ValidateClusterWorkflowTemplate(store.namespacedGetter(), store.clusterGetter(), template.DeepCopy(), opts)
		}
	}
	return map[string]func() error{"lint": run(lintOpts), "create": run(validate.ValidateOpts{})}
}

// decide follows the controller's processNodeRetries for a node whose one attempt so far
// ended as `last`. Before v3.5 the expression comes first, evaluated by Argo's own
// argoexpr.EvalBool over env.GetFuncMap of the scope that buildRetryStrategyLocalScope builds
// (keys from workflow/common; no lastRetry.message yet); then the retry policy's phase gate
// (an empty policy means OnFailure), CanRetry and the limit.
func decide(strategy wfv1.RetryStrategy, last wfv1.NodeStatus) decision {
	attempts := int32(1)
	reason := ""
	if strategy.Expression != "" {
		exitCode := "-1"
		if last.Outputs != nil && last.Outputs.ExitCode != nil {
			exitCode = *last.Outputs.ExitCode
		}
		scope := map[string]interface{}{
			common.LocalVarRetries:             strconv.Itoa(int(attempts) - 1),
			common.LocalVarRetriesLastExitCode: exitCode,
			common.LocalVarRetriesLastStatus:   string(last.Phase),
			common.LocalVarRetriesLastDuration: fmt.Sprint(last.GetDuration().Seconds()),
		}
		shouldContinue, err := argoexpr.EvalBool(strategy.Expression, env.GetFuncMap(scope))
		if err != nil {
			return decision{Error: err.Error()}
		}
		if !shouldContinue {
			return decision{Reason: "retryStrategy.expression evaluated to false"}
		}
		reason = "retryStrategy.expression evaluated to true"
	}
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
	if reason == "" {
		reason = "retryPolicy " + policyName(strategy) + " retries " + string(last.Phase)
	}
	return decision{Retry: true, Reason: reason}
}

func policyName(strategy wfv1.RetryStrategy) string {
	if strategy.RetryPolicy == "" {
		return "(empty: OnFailure)"
	}
	return string(strategy.RetryPolicy)
}
