//go:build e2e

package main

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/metaproxy/metaproxy/e2e/internal/load"
	"github.com/metaproxy/metaproxy/e2e/internal/openstack"
	"github.com/metaproxy/metaproxy/e2e/internal/ovnlab"
	"github.com/metaproxy/metaproxy/e2e/internal/vmnet"
)

// ovnSection measures an ML2/OVN chassis (e2e/internal/ovnlab: OVS userspace datapath, OVN,
// neutron ML2/OVN, nova) with one VM that got its address from OVN's DHCP, with the same load as
// the other sections: nova directly, then the incumbent (the real neutron-ovn-metadata-agent and
// its haproxy in ovnmeta-<net>), then metaproxy on the same namespace (`xds chassis` adopts it,
// cmd/xds --source netns, the data plane, cmd/extproc). Same run, same nova, same VM. The lab is
// stopped at the end of the section.
func (b *bench) ovnSection(ctx context.Context) error {
	logf := func(f string, a ...any) { b.log.Info(fmt.Sprintf(f, a...)) }
	lab, err := ovnlab.Start(ctx, ovnlab.Options{BaseDir: b.path("ovnlab"), SharedSecret: secret,
		NovaCacheExpiration: 15 * time.Second, StopGrace: grace, Logf: logf})
	if err != nil {
		return err
	}
	defer func() {
		if err := lab.Close(); err != nil {
			b.log.Warn("stop the OVN lab", "err", err)
		}
	}()
	n, err := lab.CreateNetwork(ctx, "bench-ovn", "10.73.0.0/24")
	if err != nil {
		return err
	}
	vm, err := lab.CreateVM(ctx, n, "bo0", openstack.VMSpec{Hostname: "bo0", UserData: []byte("#cloud-config\n{}\n")})
	if err != nil {
		return err
	}
	if err := lab.StartAgent(ctx); err != nil {
		return err
	}
	if err := b.waitVM(ctx, nil, vm.Namespace); err != nil {
		return fmt.Errorf("the incumbent: %w", err)
	}
	b.section = "(OVN)"
	h, err := signedHeaders(vm.VM)
	if err != nil {
		return err
	}
	base := load.HTTPOptions{Concurrency: b.o.concurrency, Duration: b.o.duration}
	o := base
	o.Name, o.URL, o.Header = "OVN: nova direct (signed headers, from the host)", lab.Cloud().NovaURL()+metaPath, h
	direct, err := b.measure(ctx, o)
	if err != nil {
		return err
	}
	o = base
	o.Name, o.URL, o.Namespaces = "OVN incumbent: VM -> OVN -> haproxy (ovnmeta) -> neutron-ovn-metadata-agent", "http://"+vmnet.MetadataIPv4+metaPath, []string{vm.Namespace}
	inc, err := b.measure(ctx, o)
	if err != nil {
		return err
	}

	// The incumbent goes (its haproxy with it); the namespace stays and metaproxy takes it over.
	pid, _ := lab.ProxyPID(n.ID)
	lab.StopAgent()
	if pid > 0 {
		_ = ovnlab.Signal(pid, syscall.SIGTERM)
	}
	admin, err := freePort()
	if err != nil {
		return err
	}
	ch, err := b.start("chassis", "", nil, b.bin("xds"), "chassis", "--neutron-url", lab.Cloud().NeutronURL(),
		"--ovsdb-connection", lab.OVSDB(), "--interval", "2s", "--admin-listen", fmt.Sprintf("127.0.0.1:%d", admin), "--log-level", "warn")
	if err != nil {
		return err
	}
	defer ch.stop(grace)
	if err := waitHTTP(ctx, ch, fmt.Sprintf("http://127.0.0.1:%d/readyz", admin), 60*time.Second); err != nil {
		return err
	}
	m, err := b.startChain(ctx, "ovn", chainOptions{neutronURL: lab.Cloud().NeutronURL(), agentINI: lab.Cloud().MetadataAgentINI(),
		xdsSource: []string{"--source", "netns", "--netns-dir", "/run/netns", "--node-id", nodeID}, vmNamespace: vm.Namespace})
	if err != nil {
		return err
	}
	defer m.stop()
	o.Name = "OVN metaproxy: VM -> OVN -> " + b.rep.dataPlaneShort() + " (ovnmeta) + cmd/extproc"
	mp, err := b.measure(ctx, o)
	if err != nil {
		return err
	}
	b.rep.ovn = [3]load.Result{direct, inc, mp}
	return nil
}
