package ovsctl

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestAtoms(t *testing.T) {
	for name, tc := range map[string]struct {
		raw  string
		str  string
		set  []string
		fail bool
	}{
		"string":       {raw: `"br-int"`, str: "br-int", set: []string{"br-int"}},
		"empty set":    {raw: `["set",[]]`, str: "", set: []string{}},
		"optional":     {raw: `["set",["netdev"]]`, str: "netdev", set: []string{"netdev"}},
		"uuid":         {raw: `["uuid","2d9d2999-5a7b-41ef-9c6f-1f171770539d"]`, str: "2d9d2999-5a7b-41ef-9c6f-1f171770539d", set: []string{"2d9d2999-5a7b-41ef-9c6f-1f171770539d"}},
		"uuid set":     {raw: `["set",[["uuid","a"],["uuid","b"]]]`, set: []string{"a", "b"}, fail: true},
		"number":       {raw: `42`, fail: true},
		"map":          {raw: `["map",[]]`, fail: true},
		"unknown atom": {raw: `["frob","x"]`, fail: true},
	} {
		t.Run(name, func(t *testing.T) {
			s, err := atomString(json.RawMessage(tc.raw))
			if tc.fail != (err != nil) {
				t.Fatalf("atomString(%s) = %q, %v", tc.raw, s, err)
			}
			if err == nil && s != tc.str {
				t.Errorf("atomString(%s) = %q, want %q", tc.raw, s, tc.str)
			}
			if tc.set != nil {
				got, err := atomSet(json.RawMessage(tc.raw))
				if err != nil {
					t.Fatalf("atomSet(%s): %v", tc.raw, err)
				}
				if diff := cmp.Diff(tc.set, got); diff != "" {
					t.Errorf("atomSet(%s) (-want +got):\n%s", tc.raw, diff)
				}
			}
		})
	}
	m, err := atomMap(json.RawMessage(`["map",[["iface-id","p1"],["neutron:cidrs","10.0.0.2/24 fd00::2/64"]]]`))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"iface-id": "p1", "neutron:cidrs": "10.0.0.2/24 fd00::2/64"}, m); diff != "" {
		t.Errorf("atomMap (-want +got):\n%s", diff)
	}
	if _, err := atomMap(json.RawMessage(`["set",[]]`)); err == nil {
		t.Error("a set decoded as a map")
	}
	if _, err := rows([]byte(`{"headings":["a","b"],"data":[["x"]]}`)); err == nil {
		t.Error("a short row decoded")
	}
}

func TestQuote(t *testing.T) {
	for in, want := range map[string]string{
		"neutron:ovn-metadata-id": `"neutron:ovn-metadata-id"`,
		`say "hi" = 1`:            `"say \"hi\" = 1"`,
	} {
		if got := quote(in); got != want {
			t.Errorf("quote(%q) = %s, want %s", in, got, want)
		}
	}
}
