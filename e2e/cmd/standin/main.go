// Command standin is the e2e suite's test-only Envoy stand-in (see e2e/internal/standin): it
// configures itself from the control plane over ADS and serves the listeners it is given.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/metaproxy/metaproxy/e2e/internal/standin"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := standin.Main(ctx, os.Args[1:], os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "standin:", err)
		os.Exit(1)
	}
}
