package ovsctl

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// table is the tools' --format=json output: one row per record, one cell per column heading.
type table struct {
	Headings []string            `json:"headings"`
	Data     [][]json.RawMessage `json:"data"`
}

// rows decodes --format=json output into one map per record, keyed by column.
func rows(out []byte) ([]map[string]json.RawMessage, error) {
	var t table
	if err := json.Unmarshal(out, &t); err != nil {
		return nil, fmt.Errorf("decode tool output: %w", err)
	}
	res := make([]map[string]json.RawMessage, 0, len(t.Data))
	for _, d := range t.Data {
		if len(d) != len(t.Headings) {
			return nil, fmt.Errorf("decode tool output: %d cells for %d columns", len(d), len(t.Headings))
		}
		r := make(map[string]json.RawMessage, len(d))
		for i, h := range t.Headings {
			r[h] = d[i]
		}
		res = append(res, r)
	}
	return res, nil
}

// tablesOf decodes the output of one run with n list commands: n --format=json tables, one per line.
func tablesOf(out []byte, n int) ([][]map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(out))
	var res [][]map[string]json.RawMessage
	for range n {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("decode tool output (table %d of %d): %w", len(res)+1, n, err)
		}
		rs, err := rows(raw)
		if err != nil {
			return nil, err
		}
		res = append(res, rs)
	}
	return res, nil
}

// atomSet decodes an OVSDB set of strings or uuids; a single atom is a set of one.
func atomSet(raw json.RawMessage) ([]string, error) {
	var pair []json.RawMessage
	if json.Unmarshal(raw, &pair) == nil && len(pair) == 2 {
		var tag string
		if json.Unmarshal(pair[0], &tag) == nil && tag == "set" {
			var elems []json.RawMessage
			if err := json.Unmarshal(pair[1], &elems); err != nil {
				return nil, fmt.Errorf("not an OVSDB set: %s", raw)
			}
			out := make([]string, 0, len(elems))
			for _, e := range elems {
				s, err := atomString(e)
				if err != nil {
					return nil, err
				}
				out = append(out, s)
			}
			return out, nil
		}
	}
	s, err := atomString(raw)
	if err != nil {
		return nil, err
	}
	return []string{s}, nil
}

// atomString decodes an OVSDB atom that is a string, or a set with at most one string (an optional
// column). An empty set is "".
func atomString(raw json.RawMessage) (string, error) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var pair []json.RawMessage
	if err := json.Unmarshal(raw, &pair); err != nil || len(pair) != 2 {
		return "", fmt.Errorf("not an OVSDB string: %s", raw)
	}
	var tag string
	if err := json.Unmarshal(pair[0], &tag); err != nil {
		return "", fmt.Errorf("not an OVSDB string: %s", raw)
	}
	switch tag {
	case "set":
		var elems []json.RawMessage
		if err := json.Unmarshal(pair[1], &elems); err != nil || len(elems) > 1 {
			return "", fmt.Errorf("not an OVSDB string: %s", raw)
		}
		if len(elems) == 0 {
			return "", nil
		}
		return atomString(elems[0])
	case "uuid", "named-uuid":
		var s string
		if err := json.Unmarshal(pair[1], &s); err != nil {
			return "", fmt.Errorf("not an OVSDB uuid: %s", raw)
		}
		return s, nil
	}
	return "", fmt.Errorf("not an OVSDB string: %s", raw)
}

// atomMap decodes an OVSDB map of strings to strings (external_ids, other_config).
func atomMap(raw json.RawMessage) (map[string]string, error) {
	var pair []json.RawMessage
	if err := json.Unmarshal(raw, &pair); err != nil || len(pair) != 2 {
		return nil, fmt.Errorf("not an OVSDB map: %s", raw)
	}
	var tag string
	if err := json.Unmarshal(pair[0], &tag); err != nil || tag != "map" {
		return nil, fmt.Errorf("not an OVSDB map: %s", raw)
	}
	var entries [][2]json.RawMessage
	if err := json.Unmarshal(pair[1], &entries); err != nil {
		return nil, fmt.Errorf("not an OVSDB map: %s", raw)
	}
	m := make(map[string]string, len(entries))
	for _, e := range entries {
		k, err := atomString(e[0])
		if err != nil {
			return nil, err
		}
		v, err := atomString(e[1])
		if err != nil {
			return nil, err
		}
		m[k] = v
	}
	return m, nil
}

// atomInt decodes an OVSDB integer atom.
func atomInt(raw json.RawMessage) (int64, error) {
	var n int64
	if err := json.Unmarshal(raw, &n); err != nil {
		return 0, fmt.Errorf("not an OVSDB integer: %s", raw)
	}
	return n, nil
}
