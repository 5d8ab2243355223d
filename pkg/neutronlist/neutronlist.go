// Package neutronlist pages through Neutron's list responses (GET /v2.0/<resource>) and refuses a
// body that is not such a list: a proxy's error page or an empty JSON object answered with 200
// is an error, never "nothing". Every reader of a Neutron list in metaproxy decides something
// from what is missing (a VM has no port, a node serves no network, a namespace is no longer
// needed), so an answer that merely lacks the list must not read as an empty one.
package neutronlist

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/pagination"
)

// Page is one page of a Neutron list whose items are under Key ("ports", "subnets", ...) and
// whose next page is named by Key+"_links", as Neutron paginates.
type Page struct {
	pagination.LinkedPageBase
	Key string
}

// Creator returns the page creator of a pager over the key list (Pager.WithPageCreator,
// pagination.NewPager).
func Creator(key string) func(pagination.PageResult) pagination.Page {
	return func(r pagination.PageResult) pagination.Page {
		return Page{LinkedPageBase: pagination.LinkedPageBase{PageResult: r}, Key: key}
	}
}

// Each walks every page of GET url, a list of key, and hands each page to fn.
func Each(ctx context.Context, c *gophercloud.ServiceClient, url, key string, fn func(Page) error) error {
	return pagination.NewPager(c, url, Creator(key)).EachPage(ctx, func(_ context.Context, p pagination.Page) (bool, error) {
		return true, fn(p.(Page))
	})
}

// Check returns r's error, or an error when r, a list answer that is not paged (GET
// /v2.0/agents/<id>/dhcp-networks, say), has no key list.
func Check(r gophercloud.Result, key string) error {
	if r.Err != nil {
		return r.Err
	}
	_, err := items(r.Body, r.Header, key)
	return err
}

// IsEmpty implements pagination.Page, checking the body's shape first.
func (p Page) IsEmpty() (bool, error) {
	if p.StatusCode == http.StatusNoContent {
		return true, nil
	}
	list, err := items(p.Body, p.Header, p.Key)
	return len(list) == 0, err
}

// items is the key list of a decoded Neutron answer, or an error saying what the body is instead.
func items(body any, h http.Header, key string) ([]any, error) {
	obj, ok := body.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("response is not a JSON object (Content-Type %q)", h.Get("Content-Type"))
	}
	list, ok := obj[key].([]any)
	if !ok {
		return nil, fmt.Errorf("response has no %q list", key)
	}
	return list, nil
}

// NextPageURL implements pagination.Page with Neutron's <key>_links.
func (p Page) NextPageURL() (string, error) {
	var s map[string]json.RawMessage
	if err := p.ExtractInto(&s); err != nil {
		return "", err
	}
	var links []gophercloud.Link
	if raw, ok := s[p.Key+"_links"]; ok {
		if err := json.Unmarshal(raw, &links); err != nil {
			return "", fmt.Errorf("%s_links: %w", p.Key, err)
		}
	}
	return gophercloud.ExtractNextURL(links)
}

// GetBody implements pagination.Page.
func (p Page) GetBody() any { return p.Body }
