// Command argo-workflows-harness judges manifests with one Argo Workflows release's own code:
// its Go types (decoded strictly, so that every field the release would silently drop is
// named), its validate package (as `argo lint --offline`, the argo server on submit, and the
// workflow controller before it runs a Workflow), and its retry expression engine.
//
// main.go is the same file in every conformance/argo-workflows-*/ folder (a test keeps them
// equal); line.go holds what differs between release lines.
//
// stdin:
//
//	{"store":     [WorkflowTemplate or ClusterWorkflowTemplate, ...],   // what templateRef finds
//	 "documents": [{"id": "...", "manifest": {...}}, ...],               // what is judged
//	 "retries":   [{"id": "...", "retryStrategy": {...},
//	                "attempts": [{"phase": "Failed", "exitCode": "3", "message": "..."}]}],
//	 "substitutions": [{"id": "...", "object": {...}, "values": {"workflow.status": "..."}}]}
//
// stdout:
//
//	{"argo": "v3.6.12", "go": "go1.26.0",
//	 "documents": [{"id", "kind", "dropped": ["spec.x", ...], "decodeError",
//	                "checks": {"lint": {"ok", "error"}, "submit": ..., "controller": ...}}],
//	 "retries":   [{"id", "dropped", "decodeError",
//	                "decisions": [{"retry": bool, "reason": "...", "error": "..."}]}],
//	 "substitutions": [{"id", "object": {...}, "error": "..."}]}
//
// A substitution is what the controller does to a step before it runs it: the step is
// JSON-marshaled, its {{...}} tags (simple and =expression) replaced by util/template.Replace
// from the given global values, unresolved tags refused, and the text read back.
//
// Each attempt is judged on its own, as the last failed attempt of a node that may still retry
// (one attempt so far, under the limit, within the backoff's maxDuration).
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"time"

	wfv1 "github.com/argoproj/argo-workflows/v3/pkg/apis/workflow/v1alpha1"
	"github.com/argoproj/argo-workflows/v3/util/template"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	k8sjson "sigs.k8s.io/json"
)

const argoModule = "github.com/argoproj/argo-workflows/v3"

type document struct {
	ID       string          `json:"id"`
	Manifest json.RawMessage `json:"manifest"`
}

type attempt struct {
	Phase    string  `json:"phase"`
	ExitCode *string `json:"exitCode"`
	Message  string  `json:"message"`
}

type retryCase struct {
	ID            string          `json:"id"`
	RetryStrategy json.RawMessage `json:"retryStrategy"`
	Attempts      []attempt       `json:"attempts"`
}

type substitution struct {
	ID     string            `json:"id"`
	Object json.RawMessage   `json:"object"`
	Values map[string]string `json:"values"`
}

type request struct {
	Store         []json.RawMessage `json:"store"`
	Documents     []document        `json:"documents"`
	Retries       []retryCase       `json:"retries"`
	Substitutions []substitution    `json:"substitutions"`
}

type check struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

type documentAnswer struct {
	ID          string           `json:"id"`
	Kind        string           `json:"kind"`
	Dropped     []string         `json:"dropped"`
	DecodeError string           `json:"decodeError,omitempty"`
	Checks      map[string]check `json:"checks"`
}

type decision struct {
	Retry  bool   `json:"retry"`
	Reason string `json:"reason,omitempty"`
	Error  string `json:"error,omitempty"`
}

type retryAnswer struct {
	ID          string     `json:"id"`
	Dropped     []string   `json:"dropped"`
	DecodeError string     `json:"decodeError,omitempty"`
	Decisions   []decision `json:"decisions"`
}

type substitutionAnswer struct {
	ID     string `json:"id"`
	Object any    `json:"object"`
	Error  string `json:"error,omitempty"`
}

type answer struct {
	Argo          string               `json:"argo"`
	Go            string               `json:"go"`
	Documents     []documentAnswer     `json:"documents"`
	Retries       []retryAnswer        `json:"retries"`
	Substitutions []substitutionAnswer `json:"substitutions"`
}

var unknownField = regexp.MustCompile(`unknown field "(.*)"`)

// decode reads JSON into one of this line's types as its Kubernetes client does (case-sensitive)
// and lists every field the types do not have: the ones this release drops without a word.
func decode(data []byte, into any) (dropped []string, err error) {
	strict, err := k8sjson.UnmarshalStrict(data, into, k8sjson.DisallowUnknownFields)
	dropped = []string{}
	for _, problem := range strict {
		if found := unknownField.FindStringSubmatch(problem.Error()); found != nil {
			dropped = append(dropped, found[1])
		} else {
			dropped = append(dropped, problem.Error())
		}
	}
	sort.Strings(dropped)
	return dropped, err
}

// templates is the map-backed store behind both template getters, as `argo lint --offline`
// builds from the files it is given. A namespaced WorkflowTemplate is found from any namespace.
type templates struct {
	namespaced map[string]*wfv1.WorkflowTemplate
	cluster    map[string]*wfv1.ClusterWorkflowTemplate
}

func (t *templates) namespacedGetter() namespacedGetter { return namespacedGetter{t} }
func (t *templates) clusterGetter() clusterGetter       { return clusterGetter{t} }

type namespacedGetter struct{ store *templates }

func (g namespacedGetter) Get(name string) (*wfv1.WorkflowTemplate, error) {
	if found, ok := g.store.namespaced[name]; ok {
		return found.DeepCopy(), nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Group: "argoproj.io", Resource: "workflowtemplates"}, name)
}

type clusterGetter struct{ store *templates }

func (g clusterGetter) Get(name string) (*wfv1.ClusterWorkflowTemplate, error) {
	if found, ok := g.store.cluster[name]; ok {
		return found.DeepCopy(), nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Group: "argoproj.io", Resource: "clusterworkflowtemplates"}, name)
}

func loadStore(manifests []json.RawMessage) (*templates, error) {
	store := &templates{
		namespaced: map[string]*wfv1.WorkflowTemplate{},
		cluster:    map[string]*wfv1.ClusterWorkflowTemplate{},
	}
	for index, raw := range manifests {
		var meta metav1.TypeMeta
		if err := json.Unmarshal(raw, &meta); err != nil {
			return nil, fmt.Errorf("store[%d]: %w", index, err)
		}
		switch meta.Kind {
		case "WorkflowTemplate":
			var template wfv1.WorkflowTemplate
			if err := k8sjson.UnmarshalCaseSensitivePreserveInts(raw, &template); err != nil {
				return nil, fmt.Errorf("store[%d]: %w", index, err)
			}
			store.namespaced[template.Name] = &template
		case "ClusterWorkflowTemplate":
			var template wfv1.ClusterWorkflowTemplate
			if err := k8sjson.UnmarshalCaseSensitivePreserveInts(raw, &template); err != nil {
				return nil, fmt.Errorf("store[%d]: %w", index, err)
			}
			store.cluster[template.Name] = &template
		default:
			return nil, fmt.Errorf("store[%d]: kind %q is no template", index, meta.Kind)
		}
	}
	return store, nil
}

// guarded turns a validation error or panic into a check.
func guarded(run func() error) (result check) {
	defer func() {
		if recovered := recover(); recovered != nil {
			result = check{Error: fmt.Sprintf("panic: %v", recovered)}
		}
	}()
	if err := run(); err != nil {
		return check{Error: err.Error()}
	}
	return check{OK: true}
}

func judge(store *templates, item document) documentAnswer {
	result := documentAnswer{ID: item.ID, Dropped: []string{}, Checks: map[string]check{}}
	var meta metav1.TypeMeta
	if err := json.Unmarshal(item.Manifest, &meta); err != nil {
		result.DecodeError = err.Error()
		return result
	}
	result.Kind = meta.Kind
	var err error
	switch meta.Kind {
	case "Workflow":
		var workflow wfv1.Workflow
		if result.Dropped, err = decode(item.Manifest, &workflow); err == nil {
			for mode, run := range validateWorkflow(store, &workflow) {
				result.Checks[mode] = guarded(run)
			}
		}
	case "WorkflowTemplate":
		var template wfv1.WorkflowTemplate
		if result.Dropped, err = decode(item.Manifest, &template); err == nil {
			for mode, run := range validateWorkflowTemplate(store, &template) {
				result.Checks[mode] = guarded(run)
			}
		}
	case "ClusterWorkflowTemplate":
		var template wfv1.ClusterWorkflowTemplate
		if result.Dropped, err = decode(item.Manifest, &template); err == nil {
			for mode, run := range validateClusterWorkflowTemplate(store, &template) {
				result.Checks[mode] = guarded(run)
			}
		}
	default:
		err = fmt.Errorf("kind %q is not judged here", meta.Kind)
	}
	if err != nil {
		result.DecodeError = err.Error()
	}
	return result
}

// lastAttempt is the node status of a failed attempt as the controller records it.
func lastAttempt(given attempt) wfv1.NodeStatus {
	started := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	node := wfv1.NodeStatus{
		ID:         "attempt-0",
		Name:       "exit-handler.publish(0)",
		Type:       wfv1.NodeTypePod,
		Phase:      wfv1.NodePhase(given.Phase),
		Message:    given.Message,
		StartedAt:  metav1.NewTime(started),
		FinishedAt: metav1.NewTime(started.Add(7 * time.Second)),
	}
	if given.ExitCode != nil {
		code := *given.ExitCode
		node.Outputs = &wfv1.Outputs{ExitCode: &code}
	}
	return node
}

func retries(item retryCase) (result retryAnswer) {
	result = retryAnswer{ID: item.ID, Dropped: []string{}, Decisions: []decision{}}
	var strategy wfv1.RetryStrategy
	dropped, err := decode(item.RetryStrategy, &strategy)
	result.Dropped = dropped
	if err != nil {
		result.DecodeError = err.Error()
		return result
	}
	for _, given := range item.Attempts {
		result.Decisions = append(result.Decisions, decideGuarded(strategy, lastAttempt(given)))
	}
	return result
}

func decideGuarded(strategy wfv1.RetryStrategy, last wfv1.NodeStatus) (result decision) {
	defer func() {
		if recovered := recover(); recovered != nil {
			result = decision{Error: fmt.Sprintf("panic: %v", recovered)}
		}
	}()
	return decide(strategy, last)
}

// substitute resolves a step's tags as the controller does, for the step as a WorkflowStep of
// this release (so a field the release drops is not substituted either).
func substitute(item substitution) (result substitutionAnswer) {
	result = substitutionAnswer{ID: item.ID}
	defer func() {
		if recovered := recover(); recovered != nil {
			result = substitutionAnswer{ID: item.ID, Error: fmt.Sprintf("panic: %v", recovered)}
		}
	}()
	var step wfv1.WorkflowStep
	if err := k8sjson.UnmarshalCaseSensitivePreserveInts(item.Object, &step); err != nil {
		result.Error = err.Error()
		return result
	}
	marshaled, err := json.Marshal(step)
	if err != nil {
		result.Error = err.Error()
		return result
	}
	replaced, err := template.Replace(string(marshaled), item.Values, false)
	if err != nil {
		result.Error = err.Error()
		return result
	}
	var resolved wfv1.WorkflowStep
	if err := json.Unmarshal([]byte(replaced), &resolved); err != nil {
		result.Error = err.Error()
		return result
	}
	result.Object = resolved
	return result
}

func argoVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, dependency := range info.Deps {
		if dependency.Path == argoModule {
			if dependency.Replace != nil {
				return dependency.Replace.Version
			}
			return dependency.Version
		}
	}
	return "unknown"
}

func main() {
	var given request
	decoder := json.NewDecoder(os.Stdin)
	decoder.DisallowUnknownFields()
	if err := decoder.Decode(&given); err != nil {
		fmt.Fprintln(os.Stderr, "bad request:", err)
		os.Exit(2)
	}
	store, err := loadStore(given.Store)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bad request:", err)
		os.Exit(2)
	}
	result := answer{
		Argo:          argoVersion(),
		Go:            strings.TrimSpace(runtime.Version()),
		Documents:     []documentAnswer{},
		Retries:       []retryAnswer{},
		Substitutions: []substitutionAnswer{},
	}
	for _, item := range given.Documents {
		result.Documents = append(result.Documents, judge(store, item))
	}
	for _, item := range given.Retries {
		result.Retries = append(result.Retries, retries(item))
	}
	for _, item := range given.Substitutions {
		result.Substitutions = append(result.Substitutions, substitute(item))
	}
	if err := json.NewEncoder(os.Stdout).Encode(result); err != nil {
		fmt.Fprintln(os.Stderr, "cannot write answer:", err)
		os.Exit(1)
	}
}
