// baton-health computes the GitOps health of Baton's resources the way the tools do: kstatus
// (sigs.k8s.io/cli-utils, what Flux and `kubectl wait --for=jsonpath`-less tooling use) and
// Argo CD's Lua health checks (gopher-lua, the interpreter Argo CD embeds), each kind's script
// read from the argocd-cm data in gitops/argocd/argocd-cm.yaml under the key Argo CD looks up,
// `resource.customizations.health.<group>_<kind>`. It reads a JSON list of objects on stdin and
// prints one JSON line per object: {"kind", "name", "kstatus", "kstatusMessage", "argo",
// "argoMessage"}.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	luajson "layeh.com/gopher-json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

type verdict struct {
	Kind           string `json:"kind"`
	Name           string `json:"name"`
	Kstatus        string `json:"kstatus"`
	KstatusMessage string `json:"kstatusMessage"`
	Argo           string `json:"argo"`
	ArgoMessage    string `json:"argoMessage"`
}

// argo runs the kind's health script as Argo CD does: the object as the global `obj`, and the
// returned table's `status` and `message`.
func argo(scripts map[string]string, obj map[string]interface{}) (string, string, error) {
	kind, _ := obj["kind"].(string)
	group := strings.Split(fmt.Sprint(obj["apiVersion"]), "/")[0]
	script, ok := scripts["resource.customizations.health."+group+"_"+kind]
	if !ok {
		return "", "", fmt.Errorf("argocd-cm has no health check for %s/%s", group, kind)
	}
	L := lua.NewState()
	defer L.Close()
	raw, err := json.Marshal(obj)
	if err != nil {
		return "", "", err
	}
	value, err := luajson.Decode(L, raw)
	if err != nil {
		return "", "", err
	}
	L.SetGlobal("obj", value)
	if err := L.DoString(string(script)); err != nil {
		return "", "", err
	}
	ret, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		return "", "", fmt.Errorf("the %s script returned no table", kind)
	}
	return ret.RawGetString("status").String(), ret.RawGetString("message").String(), nil
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: baton-health <argocd-cm.yaml> < objects.json")
		os.Exit(2)
	}
	text, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var cm struct {
		Data map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal(text, &cm); err != nil {
		fmt.Fprintln(os.Stderr, "reading the ConfigMap:", err)
		os.Exit(2)
	}
	input, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "reading objects:", err)
		os.Exit(2)
	}
	// apimachinery's decoder keeps integers as int64, as the API machinery (and kstatus) expects.
	var objs []map[string]interface{}
	if err := utiljson.Unmarshal(input, &objs); err != nil {
		fmt.Fprintln(os.Stderr, "reading objects:", err)
		os.Exit(2)
	}
	out := json.NewEncoder(os.Stdout)
	for _, o := range objs {
		u := &unstructured.Unstructured{Object: o}
		res, err := status.Compute(u)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kstatus:", err)
			os.Exit(1)
		}
		a, msg, err := argo(cm.Data, o)
		if err != nil {
			fmt.Fprintln(os.Stderr, "argo:", err)
			os.Exit(1)
		}
		_ = out.Encode(verdict{u.GetKind(), u.GetName(), res.Status.String(), res.Message, a, msg})
	}
}
