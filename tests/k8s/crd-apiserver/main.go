// crd-apiserver runs k8s.io/apiextensions-apiserver on its own, for meshentry's tests. In a
// cluster, kube-apiserver's aggregator answers the discovery documents and the OpenAPI
// endpoints for it; here this program adds them, so that kubectl and kube-rs can use it:
//
//   - /apis lists the groups of the established CustomResourceDefinitions (the newest served
//     version preferred), kept in step with them by an informer;
//   - /api and /api/v1 list the core group with no resources (this server has no Pods,
//     Namespaces, Services or Secrets);
//   - /openapi/v2 and /openapi/v3 publish the definitions' schemas.
package main

import (
	"encoding/json"
	"net/http"
	"os"
	"sort"
	"sync"

	"github.com/spf13/cobra"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apiextensions-apiserver/pkg/apiserver"
	"k8s.io/apiextensions-apiserver/pkg/cmd/server/options"
	"k8s.io/apiextensions-apiserver/pkg/generated/openapi"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/version"
	"k8s.io/apiserver/pkg/endpoints/discovery/aggregated"
	endpointsopenapi "k8s.io/apiserver/pkg/endpoints/openapi"
	genericapiserver "k8s.io/apiserver/pkg/server"
	utilopenapi "k8s.io/apiserver/pkg/util/openapi"
	"k8s.io/client-go/tools/cache"
	"k8s.io/component-base/cli"
)

// The discovery manager's methods this program calls; its interface type does not name them.
type groups interface {
	AddGroup(metav1.APIGroup)
	RemoveGroup(string)
}

func main() {
	opts := options.NewCustomResourceDefinitionsServerOptions(os.Stdout, os.Stderr)
	cmd := &cobra.Command{
		Use:   "crd-apiserver",
		Short: "apiextensions-apiserver with its own discovery and OpenAPI endpoints (meshentry tests)",
		PersistentPreRunE: func(*cobra.Command, []string) error {
			return opts.ServerRunOptions.ComponentGlobalsRegistry.Set()
		},
		RunE: func(c *cobra.Command, _ []string) error { return run(c, opts) },
	}
	cmd.SetContext(genericapiserver.SetupSignalContext())
	opts.AddFlags(cmd.Flags())
	os.Exit(cli.Run(cmd))
}

func run(c *cobra.Command, opts *options.CustomResourceDefinitionsServerOptions) error {
	if err := opts.Complete(); err != nil {
		return err
	}
	if err := opts.Validate(); err != nil {
		return err
	}
	config, err := opts.Config()
	if err != nil {
		return err
	}
	definitions := utilopenapi.GetOpenAPIDefinitionsWithoutDisabledFeatures(openapi.GetOpenAPIDefinitions)
	config.GenericConfig.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(definitions, endpointsopenapi.NewDefinitionNamer(apiserver.Scheme))
	server, err := config.Complete().New(genericapiserver.NewEmptyDelegate())
	if err != nil {
		return err
	}
	generic := server.GenericAPIServer

	apis := aggregated.WrapAggregatedDiscoveryToHandler(generic.DiscoveryGroupManager, generic.AggregatedDiscoveryGroupManager, generic.PeerAggregatedDiscoveryManager)
	generic.Handler.GoRestfulContainer.Add(apis.GenerateWebService("/apis", metav1.APIGroupList{}))
	serveJSON(generic, "/api", map[string]any{"kind": "APIVersions", "versions": []string{"v1"}, "serverAddressByClientCIDRs": []any{}})
	serveJSON(generic, "/api/v1", map[string]any{"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": []any{}})

	if manager, ok := generic.DiscoveryGroupManager.(groups); ok {
		informer := server.Informers.Apiextensions().V1().CustomResourceDefinitions()
		resync := groupSync(manager, informer.Lister().List)
		_, _ = informer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { resync() },
			UpdateFunc: func(any, any) { resync() },
			DeleteFunc: func(any) { resync() },
		})
	}
	return generic.PrepareRun().RunWithContext(c.Context())
}

func serveJSON(s *genericapiserver.GenericAPIServer, path string, body map[string]any) {
	s.Handler.NonGoRestfulMux.HandleFunc(path, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(body)
	})
}

// groupSync returns a function that makes /apis list exactly the groups of the established
// definitions, each with its served versions, newest first.
func groupSync(manager groups, list func(labels.Selector) ([]*apiextensionsv1.CustomResourceDefinition, error)) func() {
	var mu sync.Mutex
	listed := map[string]bool{}
	return func() {
		mu.Lock()
		defer mu.Unlock()
		crds, err := list(labels.Everything())
		if err != nil {
			return
		}
		served := map[string]map[string]bool{}
		for _, crd := range crds {
			if !established(crd) {
				continue
			}
			for _, v := range crd.Spec.Versions {
				if v.Served {
					if served[crd.Spec.Group] == nil {
						served[crd.Spec.Group] = map[string]bool{}
					}
					served[crd.Spec.Group][v.Name] = true
				}
			}
		}
		for group, versions := range served {
			names := make([]string, 0, len(versions))
			for v := range versions {
				names = append(names, v)
			}
			sort.Slice(names, func(i, j int) bool { return version.CompareKubeAwareVersionStrings(names[i], names[j]) > 0 })
			g := metav1.APIGroup{Name: group}
			for _, v := range names {
				g.Versions = append(g.Versions, metav1.GroupVersionForDiscovery{GroupVersion: group + "/" + v, Version: v})
			}
			g.PreferredVersion = g.Versions[0]
			manager.AddGroup(g)
			listed[group] = true
		}
		for group := range listed {
			if served[group] == nil {
				manager.RemoveGroup(group)
				delete(listed, group)
			}
		}
	}
}

func established(crd *apiextensionsv1.CustomResourceDefinition) bool {
	for _, c := range crd.Status.Conditions {
		if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
			return true
		}
	}
	return false
}
