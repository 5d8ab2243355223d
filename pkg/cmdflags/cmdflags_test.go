package cmdflags

import (
	"bytes"
	"flag"
	"io"
	"testing"
)

func TestParse(t *testing.T) {
	for name, tc := range map[string]struct {
		args      []string
		helped    bool
		wantErr   bool
		wantUsage bool
		wantLevel string
		wantNArg  int
	}{
		"help on stdout":          {args: []string{"--level", "x", "--help"}, helped: true, wantUsage: true, wantLevel: "info"},
		"-h":                      {args: []string{"-h"}, helped: true, wantUsage: true, wantLevel: "info"},
		"after -- is an argument": {args: []string{"--level", "x", "--", "--help"}, wantLevel: "x", wantNArg: 1},
		"flags parsed":            {args: []string{"--level", "debug"}, wantLevel: "debug"},
		"unknown flag":            {args: []string{"--nope"}, wantErr: true, wantLevel: "info"},
	} {
		t.Run(name, func(t *testing.T) {
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			level := fs.String("level", "info", "")
			fs.Usage = func() { io.WriteString(fs.Output(), "Usage: t") }
			var stdout bytes.Buffer
			helped, err := Parse(fs, tc.args, &stdout)
			if helped != tc.helped || (err != nil) != tc.wantErr || *level != tc.wantLevel || fs.NArg() != tc.wantNArg {
				t.Errorf("helped %v, err %v, level %q, %d args", helped, err, *level, fs.NArg())
			}
			if got := stdout.String() == "Usage: t"; got != tc.wantUsage {
				t.Errorf("stdout %q", stdout.String())
			}
		})
	}
}
