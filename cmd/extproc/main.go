// Command extproc is metaproxy's ext_proc service: Envoy calls it for every VM metadata request and
// it answers with the signed identity headers nova expects. See `extproc --help` and docs/extproc.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/metaproxy/metaproxy/pkg/extproccmd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := extproccmd.Main(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, extproccmd.ErrReported) {
			fmt.Fprintln(os.Stderr, "extproc:", err)
		}
		os.Exit(1)
	}
}
