package resolve

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// PortsFileCheckInterval is how often, at most, a PortsFile looks at its file for changes.
const PortsFileCheckInterval = time.Second

// PortsFile resolves ports from the JSON body of Neutron's GET /v2.0/ports
// ({"ports":[{"id","network_id","device_id","device_owner","project_id","tenant_id","mac_address",
// "fixed_ips":[{"subnet_id","ip_address"}]}]}) as saved with
// `curl -H "X-Auth-Token: $TOKEN" $NEUTRON_URL/v2.0/ports`, or the embedded demo.
//
// It applies the same rules as Neutron: network mode matches (network_id, fixed IP), router mode
// searches the networks of the router's interface ports in the same file, an EUI-64 link-local
// IPv6 source matches (network_id, mac_address); exactly one port must match and it must have a
// device_id. Lookups are map reads.
//
// When built from a path, the file is looked at during Resolve at most once per
// PortsFileCheckInterval (no goroutine): a change of size, modification time or inode (an atomic
// rename) re-reads it. A file that cannot be read or parsed is logged and the last good ports keep
// being served.
type PortsFile struct {
	path   string
	logger *slog.Logger
	now    func() time.Time

	index     atomic.Pointer[portIndex]
	nextCheck atomic.Int64 // unix nanoseconds of the next look at the file

	reloadMu sync.Mutex  // held while looking at the file; guards seen and lastErr
	seen     os.FileInfo // the file as last read, good or bad
	lastErr  string      // last reload error logged, to log each problem once
}

var _ Resolver = (*PortsFile)(nil)

// NewPortsFile reads the ports file at path and keeps it up to date as described on PortsFile.
// It fails when the file cannot be read or is not a valid ports document. A nil logger discards.
func NewPortsFile(path string, logger *slog.Logger) (*PortsFile, error) {
	return newPortsFile(path, logger, time.Now)
}

func newPortsFile(path string, logger *slog.Logger, now func() time.Time) (*PortsFile, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	p := &PortsFile{path: path, logger: logger, now: now}
	fi, idx, err := readPortsFile(path)
	if err != nil {
		return nil, err
	}
	p.seen = fi
	p.index.Store(idx)
	p.nextCheck.Store(now().Add(PortsFileCheckInterval).UnixNano())
	return p, nil
}

// NewPortsData returns a PortsFile over data, a ports document held in memory (the embedded demo).
// It is never reloaded.
func NewPortsData(data []byte) (*PortsFile, error) {
	idx, err := parsePorts(data)
	if err != nil {
		return nil, err
	}
	p := &PortsFile{logger: slog.New(slog.DiscardHandler), now: time.Now}
	p.index.Store(idx)
	return p, nil
}

// Len returns the number of ports currently loaded.
func (p *PortsFile) Len() int {
	return p.index.Load().count
}

// Resolve finds the one port in q.Scope that owns q.Addr. It never returns ErrUnavailable: a
// file that broke after start keeps serving its last good contents.
func (p *PortsFile) Resolve(_ context.Context, q Query) (Instance, error) {
	t, err := checkQuery(q)
	if err != nil {
		return Instance{}, err
	}
	p.maybeReload()
	idx := p.index.Load()

	if q.Scope.Kind == KindNetwork {
		return pick(q.Scope, t, idx.lookup(q.Scope.ID, t))
	}
	nets := idx.routerNets[q.Scope.ID]
	if len(nets) == 0 {
		return Instance{}, fmt.Errorf("resolve %s on %s: the router has no interface ports: %w", t, q.Scope, ErrNotFound)
	}
	var cands []candidate
	for _, n := range nets {
		cands = append(cands, idx.lookup(n, t)...)
	}
	return pick(q.Scope, t, cands)
}

// maybeReload looks at the file if PortsFileCheckInterval has passed since the last look and no
// other lookup is already doing it; other lookups go on with the current ports meanwhile.
func (p *PortsFile) maybeReload() {
	if p.path == "" {
		return
	}
	now := p.now()
	next := p.nextCheck.Load()
	if now.UnixNano() < next {
		return
	}
	if !p.nextCheck.CompareAndSwap(next, now.Add(PortsFileCheckInterval).UnixNano()) {
		return
	}
	if !p.reloadMu.TryLock() {
		return
	}
	defer p.reloadMu.Unlock()

	fi, err := os.Stat(p.path)
	if err != nil {
		p.reloadFailed(err)
		return
	}
	if p.seen != nil && os.SameFile(p.seen, fi) && fi.Size() == p.seen.Size() && fi.ModTime().Equal(p.seen.ModTime()) {
		p.lastErr = ""
		return
	}
	fi, idx, err := readPortsFile(p.path)
	if fi != nil {
		// Remember even a broken version, so it is parsed (and logged) once, not every second.
		p.seen = fi
	}
	if err != nil {
		p.reloadFailed(err)
		return
	}
	p.lastErr = ""
	p.index.Store(idx)
	p.logger.Info("ports file reloaded", "path", p.path, "ports", idx.count)
}

// reloadFailed logs a reload problem once per distinct error.
func (p *PortsFile) reloadFailed(err error) {
	if msg := err.Error(); msg != p.lastErr {
		p.lastErr = msg
		p.logger.Error("ports file reload failed, keeping the last good ports", "path", p.path, "ports", p.index.Load().count, "err", err)
	}
}

// readPortsFile stats then reads and parses the file at path. The FileInfo is taken before the read,
// so a change made during the read is seen at the next look. It is non-nil when the file could be
// read, even if it did not parse.
func readPortsFile(path string) (os.FileInfo, *portIndex, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, nil, fmt.Errorf("ports file: %w", err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("ports file: %w", err)
	}
	idx, err := parsePorts(data)
	if err != nil {
		return fi, nil, fmt.Errorf("ports file %s: %w", path, err)
	}
	return fi, idx, nil
}

// portIndex is one parsed ports document, read-only once built. It holds no pointers per port, so
// that the garbage collector, which marks a process's live heap in every cycle, has next to nothing
// to scan in it however many ports it has: every id is a span of one string (text), the ports a
// lookup key finds are a chain of packedPorts, and the keys are numbers and address bytes.
type portIndex struct {
	text       string              // every id of every port, one after the other
	ports      []packedPort        // in document order, one per (port, key) it is found under
	nets       map[string]netEntry // network id -> its number in the keys, and its id in text
	byIP       map[ipKey]chain
	byMAC      map[macKey]chain
	routerNets map[string][]string // router id -> sorted distinct networks of its interface ports
	count      int                 // ports in the document
}

type netEntry struct {
	num uint32
	id  span
}

// span is text[off : off+n].
type span struct{ off, n uint32 }

// packedPort is one port found under a key; next is 1 + the index of the next port under the same
// key (0: the last).
type packedPort struct {
	id, deviceID, projectID, tenantID, networkID span
	next                                         uint32
}

// chain is 1 + the index of the first and of the last port under a key.
type chain struct{ first, last uint32 }

type ipKey struct {
	net  uint32
	addr [16]byte // of the normalized address (IPv4 as IPv4-mapped: unambiguous once unmapped)
}

type macKey struct {
	net uint32
	mac [6]byte
}

func (idx *portIndex) str(s span) string { return idx.text[s.off : s.off+s.n] }

// lookup returns the ports on network that own t, in document order.
func (idx *portIndex) lookup(network string, t target) []candidate {
	n, ok := idx.nets[network]
	if !ok {
		return nil
	}
	var c chain
	if t.mac != "" {
		hw, err := net.ParseMAC(t.mac)
		if err != nil || len(hw) != 6 {
			return nil
		}
		c = idx.byMAC[macKey{net: n.num, mac: [6]byte(hw)}]
	} else {
		c = idx.byIP[ipKey{net: n.num, addr: t.addr.As16()}]
	}
	var out []candidate
	for i := c.first; i != 0; i = idx.ports[i-1].next {
		p := &idx.ports[i-1]
		out = append(out, candidate{id: idx.str(p.id), deviceID: idx.str(p.deviceID), projectID: idx.str(p.projectID),
			tenantID: idx.str(p.tenantID), networkID: idx.str(p.networkID)})
	}
	return out
}

// indexBuilder builds a portIndex.
type indexBuilder struct {
	idx  *portIndex
	text []byte
}

func (b *indexBuilder) add(s string) span {
	sp := span{off: uint32(len(b.text)), n: uint32(len(s))}
	b.text = append(b.text, s...)
	return sp
}

// network returns the network's entry, adding it (and its id to text) the first time.
func (b *indexBuilder) network(id string) netEntry {
	if e, ok := b.idx.nets[id]; ok {
		return e
	}
	e := netEntry{num: uint32(len(b.idx.nets)), id: b.add(id)}
	b.idx.nets[id] = e
	return e
}

// push appends p to the chain c, returning the new chain.
func (b *indexBuilder) push(c chain, p packedPort) chain {
	b.idx.ports = append(b.idx.ports, p)
	i := uint32(len(b.idx.ports))
	if c.last != 0 {
		b.idx.ports[c.last-1].next = i
	} else {
		c.first = i
	}
	c.last = i
	return c
}

// filePort is one port of a ports document; other attributes are ignored.
type filePort struct {
	ID          string `json:"id"`
	NetworkID   string `json:"network_id"`
	DeviceID    string `json:"device_id"`
	DeviceOwner string `json:"device_owner"`
	ProjectID   string `json:"project_id"`
	TenantID    string `json:"tenant_id"`
	MACAddress  string `json:"mac_address"`
	FixedIPs    []struct {
		SubnetID  string `json:"subnet_id"`
		IPAddress string `json:"ip_address"`
	} `json:"fixed_ips"`
}

// parsePorts validates a ports document and indexes it. Any invalid port rejects the whole
// document: serving half of a file could sign the wrong instance.
func parsePorts(data []byte) (*portIndex, error) {
	var doc struct {
		Ports *[]filePort `json:"ports"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("not a Neutron ports document: %w", err)
	}
	if dec.More() {
		return nil, errors.New("not a Neutron ports document: data after the JSON object")
	}
	if doc.Ports == nil {
		return nil, errors.New(`not a Neutron ports document: no "ports" list`)
	}
	idx := &portIndex{
		nets:       make(map[string]netEntry),
		byIP:       make(map[ipKey]chain),
		byMAC:      make(map[macKey]chain),
		routerNets: make(map[string][]string),
		count:      len(*doc.Ports),
	}
	b := &indexBuilder{idx: idx}
	ids := make(map[string]bool, len(*doc.Ports))
	owners := routerInterfaceOwners()
	for i, fp := range *doc.Ports {
		if fp.ID == "" {
			return nil, fmt.Errorf("port %d has no id", i)
		}
		if ids[fp.ID] {
			return nil, fmt.Errorf("port %s appears twice", fp.ID)
		}
		ids[fp.ID] = true
		if fp.NetworkID == "" {
			return nil, fmt.Errorf("port %s has no network_id", fp.ID)
		}
		if need := len(fp.ID) + len(fp.DeviceID) + len(fp.ProjectID) + len(fp.TenantID) + len(fp.NetworkID); uint64(len(b.text))+uint64(need) > math.MaxUint32 {
			return nil, errors.New("ports document too large: its ids exceed 4 GiB")
		}
		var hw net.HardwareAddr
		if fp.MACAddress != "" {
			var err error
			if hw, err = net.ParseMAC(fp.MACAddress); err != nil || len(hw) != 6 {
				return nil, fmt.Errorf("port %s: invalid mac_address %q", fp.ID, fp.MACAddress)
			}
		}
		netw := b.network(fp.NetworkID)
		p := packedPort{id: b.add(fp.ID), deviceID: b.add(fp.DeviceID), projectID: b.add(fp.ProjectID),
			tenantID: b.add(fp.TenantID), networkID: netw.id}
		if hw != nil {
			k := macKey{net: netw.num, mac: [6]byte(hw)}
			idx.byMAC[k] = b.push(idx.byMAC[k], p)
		}
		for _, ip := range fp.FixedIPs {
			a, err := netip.ParseAddr(ip.IPAddress)
			if err != nil {
				return nil, fmt.Errorf("port %s: invalid fixed ip %q", fp.ID, ip.IPAddress)
			}
			k := ipKey{net: netw.num, addr: NormalizeAddr(a).As16()}
			c := idx.byIP[k]
			if c.last != 0 && idx.ports[c.last-1].id == p.id {
				continue // the same address listed twice on one port is still one port
			}
			idx.byIP[k] = b.push(c, p)
		}
		if fp.DeviceID != "" && slices.Contains(owners, fp.DeviceOwner) {
			idx.routerNets[fp.DeviceID] = append(idx.routerNets[fp.DeviceID], fp.NetworkID)
		}
	}
	idx.text = string(b.text)
	idx.ports = slices.Clone(idx.ports) // without the slack append left
	for r, nets := range idx.routerNets {
		slices.Sort(nets)
		idx.routerNets[r] = slices.Compact(nets)
	}
	return idx, nil
}
