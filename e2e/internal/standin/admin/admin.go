// Package admin serves the stand-in's small admin interface, shaped after the parts of Envoy's
// admin API the e2e suite reads: /ready, /listeners (?format=json), /stats (?format=json) and a
// summary /config_dump.
package admin

import (
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"

	"github.com/metaproxy/metaproxy/e2e/internal/standin/dataplane"
)

// Handler returns the admin HTTP handler for d.
func Handler(d *dataplane.DataPlane) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		select {
		case <-d.Ready():
			fmt.Fprintln(w, "LIVE")
		default:
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "PRE_INITIALIZING")
		}
	})
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, d.Dump())
	})
	mux.HandleFunc("GET /listeners", func(w http.ResponseWriter, r *http.Request) {
		dump := d.Dump()
		if r.URL.Query().Get("format") == "json" {
			type sockAddr struct {
				Address   string `json:"address"`
				PortValue int    `json:"port_value"`
			}
			type addr struct {
				SocketAddress sockAddr `json:"socket_address"`
			}
			type status struct {
				Name         string `json:"name"`
				LocalAddress *addr  `json:"local_address,omitempty"`
			}
			var out struct {
				ListenerStatuses []status `json:"listener_statuses"`
			}
			for _, l := range dump.Listeners {
				if l.State != "active" {
					continue
				}
				st := status{Name: l.Name}
				if len(l.Addresses) > 0 {
					if h, p, err := net.SplitHostPort(l.Addresses[0]); err == nil {
						port, _ := strconv.Atoi(p)
						st.LocalAddress = &addr{SocketAddress: sockAddr{Address: h, PortValue: port}}
					}
				}
				out.ListenerStatuses = append(out.ListenerStatuses, st)
			}
			writeJSON(w, out)
			return
		}
		for _, l := range dump.Listeners {
			if l.State != "active" {
				continue
			}
			a := ""
			if len(l.Addresses) > 0 {
				a = l.Addresses[0]
			}
			fmt.Fprintf(w, "%s::%s\n", l.Name, a)
		}
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		snap := d.Stats().Snapshot()
		if r.URL.Query().Get("format") == "json" {
			type stat struct {
				Name  string `json:"name"`
				Value uint64 `json:"value"`
			}
			var out struct {
				Stats []stat `json:"stats"`
			}
			for _, k := range slices.Sorted(maps.Keys(snap)) {
				out.Stats = append(out.Stats, stat{k, snap[k]})
			}
			writeJSON(w, out)
			return
		}
		for _, k := range slices.Sorted(maps.Keys(snap)) {
			fmt.Fprintf(w, "%s: %d\n", k, snap[k])
		}
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
