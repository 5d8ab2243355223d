//go:build e2e

package vmnet

import (
	"context"
	"fmt"
	"net"

	"github.com/metaproxy/metaproxy/pkg/netns"
)

// Listen opens a listener inside namespace ns (e.g. a stand-in metadata server on
// 169.254.169.254:80 in a qdhcp namespace). A socket stays in the namespace it was created in, so
// the listener serves there while the rest of the process stays in its own namespace.
func Listen(ctx context.Context, ns, network, address string) (net.Listener, error) {
	var l net.Listener
	err := netns.Do(NamespacePath(ns), func() error {
		var err error
		l, err = (&net.ListenConfig{}).Listen(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("vmnet: listen on %s %s in %s: %w", network, address, ns, err)
	}
	return l, nil
}
