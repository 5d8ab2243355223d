package load

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// CloudInitPaths are the requests cloud-init's OpenStack datasource makes at boot
// (cloudinit/sources/helpers/openstack.py MetadataReader.read_v2 against nova): the version
// listing, the newest version it supports (2018-08-27) and its five files, then the EC2 tree it
// crawls (cloudinit/sources/helpers/ec2.py get_instance_metadata, as nova lists it).
var CloudInitPaths = []string{
	"/openstack",
	"/openstack/2018-08-27/meta_data.json",
	"/openstack/2018-08-27/user_data",
	"/openstack/2018-08-27/vendor_data.json",
	"/openstack/2018-08-27/vendor_data2.json",
	"/openstack/2018-08-27/network_data.json",
	"/latest/meta-data/",
	"/latest/meta-data/ami-id",
	"/latest/meta-data/ami-launch-index",
	"/latest/meta-data/ami-manifest-path",
	"/latest/meta-data/block-device-mapping/",
	"/latest/meta-data/block-device-mapping/ami",
	"/latest/meta-data/block-device-mapping/root",
	"/latest/meta-data/hostname",
	"/latest/meta-data/instance-action",
	"/latest/meta-data/instance-id",
	"/latest/meta-data/instance-type",
	"/latest/meta-data/local-hostname",
	"/latest/meta-data/local-ipv4",
	"/latest/meta-data/placement/",
	"/latest/meta-data/placement/availability-zone",
	"/latest/meta-data/public-hostname",
	"/latest/meta-data/public-ipv4",
	"/latest/meta-data/reservation-id",
	"/latest/meta-data/security-groups",
}

// BootStormOptions configures RunBootStorm.
type BootStormOptions struct {
	// Namespaces are the VMs, one namespace each; all start at the same instant.
	Namespaces []string
	// BaseURL is the metadata service (default http://169.254.169.254).
	BaseURL string
	// Paths each VM fetches, one after the other (default CloudInitPaths).
	Paths []string
	// Timeout bounds one request. Zero: 30s.
	Timeout time.Duration
	// CountURL and CountMetric, when set, name a Prometheus counter of Neutron port lookups that is
	// read before and after the storm.
	CountURL, CountMetric string
	// Name labels the result.
	Name string
}

// RunBootStorm makes every VM fetch every path, all VMs at once, each request on a new connection
// (cloud-init's url_helper opens one per request). Only 200 is ok.
func RunBootStorm(ctx context.Context, o BootStormOptions) (Result, error) {
	if len(o.Namespaces) == 0 {
		return Result{}, errors.New("boot storm: no VM namespaces")
	}
	if o.BaseURL == "" {
		o.BaseURL = "http://169.254.169.254"
	}
	if len(o.Paths) == 0 {
		o.Paths = CloudInitPaths
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	before, err := ReadCounter(ctx, o.CountURL, o.CountMetric)
	if err != nil {
		return Result{}, err
	}
	var rec recorder
	gate := make(chan struct{})
	var ready, wg sync.WaitGroup
	errc := make(chan error, len(o.Namespaces))
	for _, ns := range o.Namespaces {
		s := rec.newSlot()
		c, err := NamespaceClient(ns, o.Timeout, false)
		if err != nil {
			return Result{}, err
		}
		ready.Add(1)
		wg.Go(func() {
			ready.Done()
			<-gate
			for _, p := range o.Paths {
				if ctx.Err() != nil {
					errc <- ctx.Err()
					return
				}
				t0 := time.Now()
				kind, err := get(ctx, c, o.BaseURL+p, nil)
				if err != nil {
					kind = "transport: " + shortErr(err)
				}
				s.add(time.Since(t0), kind)
			}
		})
	}
	ready.Wait()
	start := time.Now()
	close(gate)
	wg.Wait()
	elapsed := time.Since(start)
	close(errc)
	if err := <-errc; err != nil {
		return Result{}, fmt.Errorf("boot storm: %w", err)
	}
	name := o.Name
	if name == "" {
		name = fmt.Sprintf("boot storm %d VMs x %d paths", len(o.Namespaces), len(o.Paths))
	}
	res := rec.result(name, len(o.Namespaces), elapsed)
	if o.CountURL != "" {
		after, err := ReadCounter(ctx, o.CountURL, o.CountMetric)
		if err != nil {
			return Result{}, err
		}
		res.Lookups = after - before
	}
	return res, nil
}
