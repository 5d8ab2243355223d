package hcm

import (
	"fmt"
	"strings"
)

// format is a header value with Envoy substitution commands (%DOWNSTREAM_REMOTE_ADDRESS% ...).
type format struct {
	parts []formatPart
}

type formatPart struct {
	literal string
	command string
	arg     string
}

var formatCommands = map[string]bool{
	"DOWNSTREAM_REMOTE_ADDRESS":                     true,
	"DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT":        true,
	"DOWNSTREAM_DIRECT_REMOTE_ADDRESS":              true,
	"DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": true,
	"DOWNSTREAM_LOCAL_ADDRESS":                      true,
	"DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT":         true,
	"PROTOCOL":                                      true,
	"REQ":                                           true,
}

// parseFormat parses a header value; unknown commands are errors (the resource is NACKed).
func parseFormat(s string) (*format, error) {
	f := &format{}
	for s != "" {
		i := strings.IndexByte(s, '%')
		if i < 0 {
			f.parts = append(f.parts, formatPart{literal: s})
			break
		}
		if i > 0 {
			f.parts = append(f.parts, formatPart{literal: s[:i]})
		}
		s = s[i+1:]
		if strings.HasPrefix(s, "%") {
			f.parts = append(f.parts, formatPart{literal: "%"})
			s = s[1:]
			continue
		}
		j := strings.IndexByte(s, '%')
		if j < 0 {
			return nil, fmt.Errorf("unterminated substitution in %q", s)
		}
		cmd, arg := s[:j], ""
		if k := strings.IndexByte(cmd, '('); k >= 0 && strings.HasSuffix(cmd, ")") {
			cmd, arg = cmd[:k], cmd[k+1:len(cmd)-1]
		}
		if !formatCommands[cmd] {
			return nil, fmt.Errorf("substitution %%%s%% is not supported by the stand-in", cmd)
		}
		f.parts = append(f.parts, formatPart{command: cmd, arg: strings.ToLower(arg)})
		s = s[j+1:]
	}
	return f, nil
}

// render evaluates f for a stream.
func (f *format) render(s *Stream) string {
	var b strings.Builder
	for _, p := range f.parts {
		switch p.command {
		case "":
			b.WriteString(p.literal)
		case "DOWNSTREAM_REMOTE_ADDRESS":
			b.WriteString(s.Remote.String())
		case "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT":
			b.WriteString(s.Remote.Addr().String())
		case "DOWNSTREAM_DIRECT_REMOTE_ADDRESS":
			b.WriteString(s.DirectRemote.String())
		case "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT":
			b.WriteString(s.DirectRemote.Addr().String())
		case "DOWNSTREAM_LOCAL_ADDRESS":
			b.WriteString(s.Local.String())
		case "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT":
			b.WriteString(s.Local.Addr().String())
		case "PROTOCOL":
			b.WriteString(s.Proto)
		case "REQ":
			v, _ := s.header(p.arg)
			b.WriteString(v)
		}
	}
	return b.String()
}
