// Command loadgen is metaproxy's benchmark load tool: Envoy-exact ext_proc load and the floor
// server it is compared with, HTTP load and boot storms from VM namespaces, a trivial upstream and
// a Neutron lookup counter. See `loadgen help` and docs/benchmarks.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/metaproxy/metaproxy/e2e/internal/load"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := load.Main(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}
