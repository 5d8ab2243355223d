package neutronlist

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gophercloud/gophercloud/v2"
)

// serve answers GET /v2.0/ports with body and Content-Type ct; ?page=2 with the second page.
func serve(t *testing.T, ct, body string) *gophercloud.ServiceClient {
	t.Helper()
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", ct)
		if r.URL.Query().Get("page") == "2" {
			fmt.Fprint(w, `{"ports": [{"id": "p2"}]}`)
			return
		}
		fmt.Fprint(w, strings.ReplaceAll(body, "NEXT", srv.URL+"/v2.0/ports?page=2"))
	}))
	t.Cleanup(srv.Close)
	return &gophercloud.ServiceClient{ProviderClient: &gophercloud.ProviderClient{HTTPClient: *srv.Client()},
		Endpoint: srv.URL + "/", ResourceBase: srv.URL + "/v2.0/"}
}

func TestEach(t *testing.T) {
	for name, tc := range map[string]struct {
		ct, body string
		want     []string // ids seen, page by page
		wantErr  string
	}{
		"empty list":               {ct: "application/json", body: `{"ports": []}`},
		"two pages by ports_links": {ct: "application/json", body: `{"ports": [{"id": "p1"}], "ports_links": [{"rel": "next", "href": "NEXT"}]}`, want: []string{"p1", "p2"}},
		"empty object":             {ct: "application/json", body: `{}`, wantErr: `response has no "ports" list`},
		"another list":             {ct: "application/json", body: `{"networks": []}`, wantErr: `response has no "ports" list`},
		"a proxy's page":           {ct: "text/html", body: `<html>login</html>`, wantErr: `response is not a JSON object (Content-Type "text/html")`},
	} {
		t.Run(name, func(t *testing.T) {
			c := serve(t, tc.ct, tc.body)
			var got []string
			err := Each(context.Background(), c, c.ServiceURL("ports"), "ports", func(p Page) error {
				var ps []struct {
					ID string `json:"id"`
				}
				if err := p.ExtractIntoSlicePtr(&ps, "ports"); err != nil {
					return err
				}
				for _, x := range ps {
					got = append(got, x.ID)
				}
				return nil
			})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}
