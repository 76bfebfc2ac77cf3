// Command bexpr-harness evaluates filters with the real hashicorp/go-bexpr, as kfp-operator
// does: bexpr.CreateEvaluator(expr), then Evaluate on each property map.
//
// stdin:  [{"expr": "...", "properties": [{...}, ...]}, ...]
// stdout: [{"ok": bool, "error": "...", "results": [{"match": bool, "error": "...", "panic": "..."}]}]
//
// Property maps are typed as kfp-operator's propertiesToPrimitiveMap types MLMD values: JSON
// integers become int64 (int_value), other numbers float64 (double_value), strings stay
// strings, objects become map[string]any (struct_value.AsMap()). Panics are reported, not
// fatal, so one case cannot hide the rest.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/hashicorp/go-bexpr"
)

type request struct {
	Expr       string           `json:"expr"`
	Properties []map[string]any `json:"properties"`
}

type outcome struct {
	Match bool   `json:"match"`
	Error string `json:"error,omitempty"`
	Panic string `json:"panic,omitempty"`
}

type answer struct {
	OK      bool      `json:"ok"`
	Error   string    `json:"error,omitempty"`
	Results []outcome `json:"results"`
}

// typed mirrors MLMD values as kfp-operator hands them to go-bexpr.
func typed(value any, top bool) any {
	switch v := value.(type) {
	case json.Number:
		if i, err := v.Int64(); err == nil && top {
			return i
		}
		f, _ := v.Float64()
		return f
	case map[string]any:
		for key, inner := range v {
			v[key] = typed(inner, false)
		}
		return v
	default:
		return v
	}
}

func evaluate(evaluator *bexpr.Evaluator, datum map[string]any) (result outcome) {
	defer func() {
		if recovered := recover(); recovered != nil {
			result = outcome{Panic: fmt.Sprint(recovered)}
		}
	}()
	match, err := evaluator.Evaluate(datum)
	if err != nil {
		return outcome{Error: err.Error()}
	}
	return outcome{Match: match}
}

func run(item request) (result answer) {
	defer func() {
		if recovered := recover(); recovered != nil {
			result = answer{Error: fmt.Sprintf("panic: %v", recovered), Results: []outcome{}}
		}
	}()
	evaluator, err := bexpr.CreateEvaluator(item.Expr)
	if err != nil {
		return answer{Error: err.Error(), Results: []outcome{}}
	}
	result = answer{OK: true, Results: make([]outcome, 0, len(item.Properties))}
	for _, properties := range item.Properties {
		for key, value := range properties {
			properties[key] = typed(value, true)
		}
		result.Results = append(result.Results, evaluate(evaluator, properties))
	}
	return result
}

func main() {
	decoder := json.NewDecoder(os.Stdin)
	decoder.UseNumber()
	var items []request
	if err := decoder.Decode(&items); err != nil {
		fmt.Fprintln(os.Stderr, "bad request:", err)
		os.Exit(2)
	}
	answers := make([]answer, 0, len(items))
	for _, item := range items {
		answers = append(answers, run(item))
	}
	if err := json.NewEncoder(os.Stdout).Encode(answers); err != nil {
		fmt.Fprintln(os.Stderr, "cannot write answer:", err)
		os.Exit(1)
	}
}
