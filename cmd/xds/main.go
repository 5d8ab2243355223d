// Command xds is metaproxy's xDS control plane: it serves every Envoy of the deployment the
// listeners of the Neutron networks it hosts. See `xds --help` and docs/xds.md.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/metaproxy/metaproxy/pkg/xdscmd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := xdscmd.Main(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "xds:", err)
		os.Exit(1)
	}
}
