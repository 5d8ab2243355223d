package extproccmd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/metaproxy/metaproxy/pkg/contract"
	"github.com/metaproxy/metaproxy/pkg/decide"
	"github.com/metaproxy/metaproxy/pkg/telemetry"
)

const resolveUsage = `extproc resolve: show what a VM at an address would be signed as, or the error it would get.

It runs the exact decision the service makes for a request from ADDR on the listener of network
(or router) ID, with the same port source and secret flags, and prints the headers nova would
receive. The signature is hidden unless --show-signature is given.

Usage:
  extproc resolve --network ID --ip ADDR [flags]
  extproc resolve --router ID --ip ADDR [flags]

Flags:
`

// errNotForwarded makes `extproc resolve` exit non-zero when the VM would get an error.
var errNotForwarded = fmt.Errorf("the request would not reach nova: %w", ErrReported)

// ErrReported is wrapped by errors already explained on stdout; main exits non-zero without repeating them.
var ErrReported = errors.New("reported")

func runResolve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var network, router, ip string
	var showSig bool
	cfg, _, err := parseArgs("extproc resolve", args, func(fs *flag.FlagSet) {
		fs.StringVar(&network, "network", "", "Neutron network `id` of the listener (network mode)")
		fs.StringVar(&router, "router", "", "Neutron router `id` of the listener (router mode)")
		fs.StringVar(&ip, "ip", "", "the VM `address` (IPv4, IPv6, or IPv6 link-local for a MAC lookup)")
		fs.BoolVar(&showSig, "show-signature", false, "print X-Instance-ID-Signature too (it is a credential for that instance's metadata)")
	}, func(fs *flag.FlagSet) { fmt.Fprint(stderr, resolveUsage); fs.SetOutput(stderr); fs.PrintDefaults() })
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return fmt.Errorf("--ip %q is not an IP address", ip)
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	log, err := telemetry.NewLogger(stderr, cfg.LogFormat, cfg.LogLevel)
	if err != nil {
		return err
	}
	w, err := assemble(cfg, log, false, nil)
	if err != nil {
		return err
	}
	// The service's own probe first: it says what a lookup alone cannot (credentials that cannot
	// see other projects' ports find "no port" for their VMs).
	if w.ready.probe != nil {
		w.ready.check(ctx)
		if ok, why := w.ready.state(); !ok {
			fmt.Fprintf(stdout, "not ready (the service's /readyz would answer 503): %s\n", why)
		}
	}

	md := metadata.MD{}
	if network != "" {
		md.Set(contract.NetworkIDMetadata, network)
	}
	if router != "" {
		md.Set(contract.RouterIDMetadata, router)
	}
	// The same message Envoy would send for a request from addr.
	req := &extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{}},
		Attributes: map[string]*structpb.Struct{contract.ExtProcAttributesKey: {Fields: map[string]*structpb.Value{
			contract.SourceAddressAttribute: structpb.NewStringValue(net.JoinHostPort(addr.String(), "0")),
		}}},
	}
	resp, dec := w.decider.Decide(metadata.NewIncomingContext(ctx, md), req) // md as gRPC hands a stream Envoy's initial metadata
	if ir := resp.GetImmediateResponse(); ir != nil {
		fmt.Fprintf(stdout, "%s %s at %s -> answered %d without contacting nova: %s", dec.Query.Scope.Kind, dec.Query.Scope.ID, addr,
			ir.GetStatus().GetCode(), ir.GetBody())
		if dec.Err != nil {
			fmt.Fprintf(stdout, "reason: %v\n", dec.Err)
		}
		return errNotForwarded
	}
	fmt.Fprintf(stdout, "%s %s at %s -> forwarded to nova as instance %s of project %s (port %s on network %s)\n",
		dec.Query.Scope.Kind, dec.Query.Scope.ID, dec.Query.Addr, dec.Instance.InstanceID, dec.Instance.ProjectID, dec.Instance.PortID, dec.Instance.NetworkID)
	m := resp.GetRequestHeaders().GetResponse().GetHeaderMutation()
	fmt.Fprintf(stdout, "  removed if the VM sent them: %v\n", m.GetRemoveHeaders())
	for _, h := range m.GetSetHeaders() {
		v := string(h.GetHeader().GetRawValue())
		if h.GetHeader().GetKey() == decide.HeaderSignature && !showSig {
			v = "<" + strconv.Itoa(len(v)) + " hex digits; --show-signature prints it; secret from " + w.secretFrom + ">"
		}
		fmt.Fprintf(stdout, "  %s: %s\n", h.GetHeader().GetKey(), v)
	}
	return nil
}
