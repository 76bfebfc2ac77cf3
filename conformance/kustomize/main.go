// Command kustomize-harness renders kustomization directories with the real kustomize API
// (sigs.k8s.io/kustomize/api, the krusty package `kubectl kustomize` and `kubectl apply -k`
// build on), with its default options, from the files on disk.
//
// stdin:
//
//	{"dirs": ["/abs/path", ...]}
//
// stdout:
//
//	{"kustomize": "v0.21.2", "go": "go1.26.0",
//	 "results": [{"dir": "/abs/path", "yaml": "---separated documents", "error": ""}, ...]}
//
// A directory that fails to render gives its error as a string; the others still render.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

type request struct {
	Dirs []string `json:"dirs"`
}

type result struct {
	Dir   string `json:"dir"`
	YAML  string `json:"yaml"`
	Error string `json:"error"`
}

type response struct {
	Kustomize string   `json:"kustomize"`
	Go        string   `json:"go"`
	Results   []result `json:"results"`
}

func render(dir string) (out result) {
	out.Dir = dir
	defer func() {
		if recovered := recover(); recovered != nil {
			out.YAML, out.Error = "", fmt.Sprintf("panic: %v", recovered)
		}
	}()
	resMap, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		out.Error = err.Error()
		return out
	}
	text, err := resMap.AsYaml()
	if err != nil {
		out.Error = err.Error()
		return out
	}
	out.YAML = string(text)
	return out
}

func moduleVersion(path string) string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == path {
				return dep.Version
			}
		}
	}
	return "unknown"
}

func main() {
	var req request
	decoder := json.NewDecoder(os.Stdin)
	decoder.DisallowUnknownFields()
	if err := decoder.Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, "kustomize-harness: bad request:", err)
		os.Exit(2)
	}
	resp := response{
		Kustomize: moduleVersion("sigs.k8s.io/kustomize/api"),
		Go:        runtime.Version(),
		Results:   make([]result, 0, len(req.Dirs)),
	}
	for _, dir := range req.Dirs {
		resp.Results = append(resp.Results, render(dir))
	}
	if err := json.NewEncoder(os.Stdout).Encode(resp); err != nil {
		fmt.Fprintln(os.Stderr, "kustomize-harness:", err)
		os.Exit(1)
	}
}
