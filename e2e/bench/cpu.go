//go:build e2e

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// clkTck is USER_HZ: /proc/PID/stat counts CPU time in 1/100 s on Linux.
const clkTck = 100

// component names the part of a chain a process belongs to, from its command line, or "".
func component(cmdline string, self int, pid int) string {
	if pid == self {
		return "load client (this harness)"
	}
	if !strings.Contains(cmdline, "metaproxy-bench-") {
		return "" // not ours: another run's OpenStack, other tenants
	}
	switch {
	case strings.Contains(cmdline, "neutron-ovn-metadata-agent"):
		return "neutron-ovn-metadata-agent"
	case strings.Contains(cmdline, "privsep-helper"):
		return "neutron-ovn-metadata-agent (privsep)"
	case strings.Contains(cmdline, "ovs-vswitchd"):
		return "ovs-vswitchd (userspace datapath)"
	case strings.Contains(cmdline, "ovn-controller"):
		return "ovn-controller"
	case strings.Contains(cmdline, "/xds chassis"):
		return "xds chassis"
	case strings.Contains(cmdline, "neutron-metadata-agent"):
		return "neutron-metadata-agent"
	case strings.Contains(cmdline, "haproxy"):
		return "haproxy"
	case strings.Contains(cmdline, "nova-api"):
		return "nova metadata API"
	case strings.Contains(cmdline, "neutron-server"):
		return "neutron-server"
	case strings.Contains(cmdline, "beam.smp"):
		return "RabbitMQ"
	case strings.Contains(cmdline, "/extproc"):
		return "cmd/extproc"
	case strings.Contains(cmdline, "/standin"):
		return "data plane (stand-in)"
	case strings.Contains(cmdline, "envoy"):
		return "data plane (Envoy)"
	case strings.Contains(cmdline, "/xds"):
		return "cmd/xds"
	case strings.Contains(cmdline, "loadgen upstream"):
		return "trivial upstream"
	}
	return ""
}

// cpuSample is the CPU time used so far per component, plus the whole machine's busy time.
type cpuSample struct {
	at    time.Time
	byPID map[int]cpuProc
	busy  float64 // seconds of non-idle CPU time, all CPUs (/proc/stat)
}

type cpuProc struct {
	comp string
	secs float64
}

func sampleCPU() cpuSample {
	s := cpuSample{at: time.Now(), byPID: map[int]cpuProc{}}
	self := os.Getpid()
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		cl, err := os.ReadFile(d + "/cmdline")
		if err != nil {
			continue
		}
		comp := component(strings.ReplaceAll(string(cl), "\x00", " "), self, pid)
		if comp == "" {
			continue
		}
		st, err := os.ReadFile(d + "/stat")
		if err != nil {
			continue
		}
		str := string(st)
		i := strings.LastIndexByte(str, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(str[i+1:])
		if len(f) < 13 {
			continue
		}
		ut, _ := strconv.ParseFloat(f[11], 64)
		stt, _ := strconv.ParseFloat(f[12], 64)
		s.byPID[pid] = cpuProc{comp: comp, secs: (ut + stt) / clkTck}
	}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		f := strings.Fields(line)
		for i, v := range f[1:] {
			x, _ := strconv.ParseFloat(v, 64)
			if i == 3 || i == 4 { // idle, iowait
				continue
			}
			s.busy += x / clkTck
		}
	}
	return s
}

// cpuUse is CPU time per component between two samples (processes born in between count from 0).
type cpuUse struct {
	wall  time.Duration
	busy  float64 // whole machine
	comps map[string]float64
}

func diffCPU(a, b cpuSample) cpuUse {
	u := cpuUse{wall: b.at.Sub(a.at), busy: b.busy - a.busy, comps: map[string]float64{}}
	for pid, p := range b.byPID {
		u.comps[p.comp] += p.secs - a.byPID[pid].secs
	}
	return u
}

// perRequest renders the CPU time per request of each component that used any, biggest first,
// and what the rest of the machine (other tenants, the kernel's softirq work) used.
func (u cpuUse) perRequest(requests int) string {
	if requests == 0 {
		return "-"
	}
	type kv struct {
		k string
		v float64
	}
	var list []kv
	total := 0.0
	for k, v := range u.comps {
		if v > 0.005 {
			list = append(list, kv{k, v})
		}
		total += v
	}
	slices.SortFunc(list, func(a, b kv) int {
		switch {
		case a.v > b.v:
			return -1
		case a.v < b.v:
			return 1
		}
		return strings.Compare(a.k, b.k)
	})
	var parts []string
	for _, e := range list {
		parts = append(parts, fmt.Sprintf("%s %.3f", e.k, 1000*e.v/float64(requests)))
	}
	parts = append(parts, fmt.Sprintf("everything else %.3f", 1000*(u.busy-total)/float64(requests)))
	return strings.Join(parts, ", ")
}
