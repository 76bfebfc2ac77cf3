// Argo Events v1.9.11 judges the events and the Sensors: its own NATS EventSource listener,
// its dependency filter and its trigger parameters (tests/test_conformance_argo_events.py).
//
// One JSON request on stdin. {"mode": "listen", "eventSource": YAML, "url": URL} runs the
// NATS listener of the EventSource (URL swapped in) until stdin closes, printing a "ready"
// line once it receives, then one line per event it dispatched: the event as the Sensor
// receives it. {"mode": "evaluate", "events": [...], "sensors": [YAML...]} runs every
// dependency filter and trigger parameter of every Sensor on every event.
// For a resource event it also says whether the resource EventSource's informer would
// deliver it at all: its validation, the label selector it builds from the filter (sent to the
// API server as text, parsed there) matched against the object's labels, and its event types.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/google/uuid"
	natslib "github.com/nats-io/nats.go"
	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/argoproj/argo-events/pkg/apis/events/v1alpha1"
	eventsourcecommon "github.com/argoproj/argo-events/pkg/eventsources/common"
	"github.com/argoproj/argo-events/pkg/eventsources/events"
	"github.com/argoproj/argo-events/pkg/eventsources/sources/nats"
	"github.com/argoproj/argo-events/pkg/eventsources/sources/resource"
	"github.com/argoproj/argo-events/pkg/metrics"
	"github.com/argoproj/argo-events/pkg/sensors/dependencies"
	"github.com/argoproj/argo-events/pkg/sensors/triggers"
	"github.com/argoproj/argo-events/pkg/shared/logging"
)

const probeHeader = "Conformance-Probe" // the harness's own messages, never printed

type request struct {
	Mode        string         `json:"mode"`
	EventSource string         `json:"eventSource"`
	URL         string         `json:"url"`
	Events      []eventRequest `json:"events"`
	Sensors     []string       `json:"sensors"`
}

// eventRequest is a Sensor's event as the bus carries it (a CloudEvent in JSON), or the
// resource EventSource's event for an object (built here as that EventSource builds it).
type eventRequest struct {
	Bus      json.RawMessage  `json:"bus,omitempty"`
	Resource *resourceRequest `json:"resource,omitempty"`
}

type resourceRequest struct {
	EventSource string          `json:"eventSource"`
	EventType   string          `json:"eventType"`
	Object      json.RawMessage `json:"object"`
}

// sensorEvent is v1alpha1.Event with its data as text rather than base64.
type sensorEvent struct {
	Context *v1alpha1.EventContext `json:"context"`
	Data    string                 `json:"data"`
}

var out = json.NewEncoder(os.Stdout)

func main() {
	// Upstream prints to stdout (ResolveParamValue's fmt.Printf): stdout is ours alone.
	os.Stdout = os.Stderr
	config := zap.NewProductionConfig()
	config.OutputPaths = []string{"stderr"}
	logger, err := config.Build()
	fail(err)
	ctx, cancel := context.WithCancel(logging.WithLogger(context.Background(), logger.Sugar()))
	defer cancel()
	decoder := json.NewDecoder(bufio.NewReader(os.Stdin))
	var req request
	fail(decoder.Decode(&req))
	switch req.Mode {
	case "listen":
		listen(ctx, cancel, req, io.MultiReader(decoder.Buffered(), os.Stdin))
	case "evaluate":
		fail(out.Encode(evaluate(req)))
	default:
		fail(fmt.Errorf("unknown mode %q", req.Mode))
	}
}

func fail(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "harness:", err)
		os.Exit(1)
	}
}

func errorText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func listen(ctx context.Context, cancel context.CancelFunc, req request, stdin io.Reader) {
	var source v1alpha1.EventSource
	fail(yaml.UnmarshalStrict([]byte(req.EventSource), &source))
	if len(source.Spec.NATS) != 1 {
		fail(fmt.Errorf("want one nats event, got %d", len(source.Spec.NATS)))
	}
	var listener *nats.EventListener
	var dropped *v1alpha1.NATSAuth
	for name, spec := range source.Spec.NATS {
		spec.URL = req.URL
		// Secrets are read from /argo-events/secrets/NAME/KEY, a pod's volume: the test
		// server has no auth, and the ready line says what was dropped.
		dropped, spec.Auth = spec.Auth, nil
		listener = &nats.EventListener{
			EventSourceName: source.Name,
			EventName:       name,
			NATSEventSource: spec,
			Metrics:         metrics.NewMetrics(source.Namespace),
		}
	}
	fail(listener.ValidateEventSource(ctx))
	ready := make(chan struct{})
	var once sync.Once
	lines := make(chan any, 64)
	stopped := make(chan error, 1)
	go func() {
		stopped <- listener.StartListening(ctx, func(data []byte, opts ...eventsourcecommon.Option) error {
			var seen events.NATSEventData
			if json.Unmarshal(data, &seen) == nil && seen.Header[probeHeader] != nil {
				once.Do(func() { close(ready) })
				return nil
			}
			lines <- map[string]any{"event": dispatch(listener, data, opts)}
			return nil
		})
	}()
	probe, err := natslib.Connect(req.URL)
	fail(err)
	deadline := time.After(20 * time.Second)
probing:
	for {
		msg := natslib.NewMsg(source.Spec.NATS[listener.EventName].Subject)
		msg.Header.Set(probeHeader, "1")
		msg.Data = []byte("{}")
		fail(probe.PublishMsg(msg))
		select {
		case <-ready:
			break probing
		case err := <-stopped:
			fail(fmt.Errorf("listener stopped: %v", err))
		case <-deadline:
			fail(fmt.Errorf("listener did not receive a probe in 20 s"))
		case <-time.After(100 * time.Millisecond):
		}
	}
	probe.Close()
	fail(out.Encode(map[string]any{
		"ready": true, "eventSourceName": listener.EventSourceName,
		"eventName": listener.EventName, "droppedAuth": dropped,
	}))
	eof := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, stdin)
		close(eof)
	}()
	for {
		select {
		case line := <-lines:
			fail(out.Encode(line))
		case err := <-stopped:
			fail(fmt.Errorf("listener stopped: %v", err))
		case <-eof:
			cancel()
			fail(<-stopped)
			return
		}
	}
}

// dispatch is what the EventSource adaptor (pkg/eventsources/eventing.go) does with the
// listener's bytes, then what the Sensor does with the bus message (json.Unmarshal into a
// CloudEvent, then convertEvent in pkg/sensors/listener.go).
func dispatch(listener *nats.EventListener, data []byte, opts []eventsourcecommon.Option) any {
	id := uuid.New()
	event := cloudevents.NewEvent()
	event.SetID(fmt.Sprintf("%x", id[:]))
	event.SetType(string(listener.GetEventSourceType()))
	event.SetSource(listener.GetEventSourceName())
	event.SetSubject(listener.GetEventName())
	event.SetTime(time.Now())
	for _, opt := range opts {
		fail(opt(&event))
	}
	fail(event.SetData(cloudevents.ApplicationJSON, data))
	bus, err := json.Marshal(event)
	fail(err)
	received, err := receive(bus)
	fail(err)
	return map[string]any{"bus": json.RawMessage(bus), "sensor": received}
}

func receive(bus []byte) (sensorEvent, error) {
	var event *cloudevents.Event
	if err := json.Unmarshal(bus, &event); err != nil {
		return sensorEvent{}, err
	}
	return sensorEvent{
		Context: &v1alpha1.EventContext{
			DataContentType: event.Context.GetDataContentType(),
			Source:          event.Context.GetSource(),
			SpecVersion:     event.Context.GetSpecVersion(),
			Type:            event.Context.GetType(),
			Time:            metav1.Time{Time: event.Context.GetTime()},
			ID:              event.Context.GetID(),
			Subject:         event.Context.GetSubject(),
		},
		Data: string(event.Data()),
	}, nil
}

// resourceEvent is what the resource EventSource (pkg/eventsources/sources/resource) and the
// adaptor make of an informer event for OBJECT.
func resourceEvent(req *resourceRequest) ([]byte, *selection, error) {
	var source v1alpha1.EventSource
	if err := yaml.UnmarshalStrict([]byte(req.EventSource), &source); err != nil {
		return nil, nil, err
	}
	for name, spec := range source.Spec.Resource {
		selected := selects(spec, req.EventType, req.Object)
		// The informer hands over an *unstructured.Unstructured, which processOne marshals.
		var obj unstructured.Unstructured
		if err := obj.UnmarshalJSON(req.Object); err != nil {
			return nil, nil, err
		}
		body, err := json.Marshal(&obj)
		if err != nil {
			return nil, nil, err
		}
		var old []byte
		data, err := json.Marshal(&events.ResourceEventData{
			EventType: req.EventType,
			Body:      (*json.RawMessage)(&body),
			OldBody:   (*json.RawMessage)(&old),
			Group:     spec.Group,
			Version:   spec.Version,
			Resource:  spec.Resource,
			Metadata:  spec.Metadata,
		})
		if err != nil {
			return nil, nil, err
		}
		id := uuid.New()
		event := cloudevents.NewEvent()
		event.SetID(fmt.Sprintf("%x", id[:]))
		event.SetType(string(v1alpha1.ResourceEvent))
		event.SetSource(source.Name)
		event.SetSubject(name)
		event.SetTime(time.Now())
		if err := event.SetData(cloudevents.ApplicationJSON, data); err != nil {
			return nil, nil, err
		}
		bus, err := json.Marshal(event)
		return bus, &selected, err
	}
	return nil, nil, fmt.Errorf("no resource event in the EventSource")
}

type dependencyResult struct {
	Name  string `json:"name"`
	Fires bool   `json:"fires"`
	Error string `json:"error"`
}

type triggerResult struct {
	Name     string         `json:"name"`
	Payload  *string        `json:"payload"`
	Resource map[string]any `json:"resource"`
	Error    string         `json:"error"`
}

type sensorResult struct {
	Sensor       string             `json:"sensor"`
	Error        string             `json:"error"`
	Dependencies []dependencyResult `json:"dependencies"`
	Triggers     []triggerResult    `json:"triggers"`
}

// selection is whether the resource EventSource would hand an event for the object over at all.
type selection struct {
	Selector string `json:"selector"`
	Selected bool   `json:"selected"`
	Error    string `json:"error"`
}

// selects is what stands between an object and processOne in the resource EventSource's
// StartListening: ValidateEventSource, the informer's ListOptions.LabelSelector (LabelSelector
// of the filter's labels, as text, parsed by the API server with the same labels package), and
// a handler for the event type. passFilters' other filters are not modelled: refused here.
func selects(spec v1alpha1.ResourceEventSource, eventType string, object json.RawMessage) selection {
	listener := &resource.EventListener{ResourceEventSource: spec}
	if err := listener.ValidateEventSource(context.Background()); err != nil {
		return selection{Error: err.Error()}
	}
	if filter := spec.Filter; filter != nil && (filter.Prefix != "" || filter.Fields != nil || filter.AfterStart || !filter.CreatedBy.IsZero()) {
		return selection{Error: "the harness models only the label filter"}
	}
	result := selection{}
	selector := labels.Everything()
	if spec.Filter != nil && spec.Filter.Labels != nil {
		built, err := resource.LabelSelector(spec.Filter.Labels)
		if err != nil {
			return selection{Error: err.Error()}
		}
		result.Selector = built.String()
		if selector, err = labels.Parse(result.Selector); err != nil {
			return selection{Selector: result.Selector, Error: err.Error()}
		}
	}
	var obj struct {
		Metadata struct {
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(object, &obj); err != nil {
		return selection{Error: err.Error()}
	}
	handled := false
	for _, watched := range spec.EventTypes {
		handled = handled || string(watched) == eventType
	}
	result.Selected = handled && selector.Matches(labels.Set(obj.Metadata.Labels))
	return result
}

func evaluate(req request) map[string]any {
	results := [][]sensorResult{}
	received := []sensorEvent{}
	selections := []*selection{}
	for _, item := range req.Events {
		bus := []byte(item.Bus)
		var selected *selection
		if item.Resource != nil {
			var err error
			bus, selected, err = resourceEvent(item.Resource)
			fail(err)
		}
		selections = append(selections, selected)
		event, err := receive(bus)
		fail(err)
		received = append(received, event)
		perSensor := []sensorResult{}
		for _, text := range req.Sensors {
			perSensor = append(perSensor, evaluateSensor(text, &v1alpha1.Event{
				Context: event.Context, Data: []byte(event.Data),
			}))
		}
		results = append(results, perSensor)
	}
	return map[string]any{"events": received, "results": results, "selections": selections}
}

func evaluateSensor(text string, event *v1alpha1.Event) sensorResult {
	var sensor v1alpha1.Sensor
	if err := yaml.UnmarshalStrict([]byte(text), &sensor); err != nil {
		return sensorResult{Error: err.Error()}
	}
	result := sensorResult{Sensor: sensor.Name}
	mapping := map[string]*v1alpha1.Event{}
	for _, dep := range sensor.Spec.Dependencies {
		fires, err := dependencies.Filter(event, dep.Filters, dep.FiltersLogicalOperator)
		result.Dependencies = append(result.Dependencies, dependencyResult{dep.Name, fires, errorText(err)})
		mapping[dep.Name] = event
	}
	for _, original := range sensor.Spec.Triggers {
		trigger := original.DeepCopy()
		result.Triggers = append(result.Triggers, fire(trigger, mapping))
	}
	return result
}

// fire applies a trigger's parameters as the Sensor does before executing it
// (pkg/sensors/listener.go triggerOne; the http and argoWorkflow triggers' own steps).
func fire(trigger *v1alpha1.Trigger, mapping map[string]*v1alpha1.Event) triggerResult {
	result := triggerResult{Name: trigger.Template.Name}
	if err := triggers.ApplyTemplateParameters(mapping, trigger); err != nil {
		result.Error = err.Error()
		return result
	}
	switch template := trigger.Template; {
	case template.HTTP != nil:
		http := template.HTTP
		if http.Parameters != nil {
			raw, err := json.Marshal(http)
			if err == nil {
				raw, err = triggers.ApplyParams(raw, http.Parameters, mapping)
			}
			if err == nil {
				err = json.Unmarshal(raw, &http)
			}
			if err != nil {
				result.Error = err.Error()
				return result
			}
		}
		payload, err := triggers.ConstructPayload(mapping, http.Payload)
		if err != nil {
			result.Error = err.Error()
			return result
		}
		text := string(payload)
		result.Payload = &text
	case template.ArgoWorkflow != nil:
		obj, err := triggers.FetchKubernetesResource(template.ArgoWorkflow.Source)
		if err == nil {
			err = triggers.ApplyResourceParameters(mapping, template.ArgoWorkflow.Parameters, obj)
		}
		if err != nil {
			result.Error = err.Error()
			return result
		}
		result.Resource = obj.Object
	default:
		result.Error = "the harness knows http and argoWorkflow triggers only"
	}
	return result
}
