// Package cmdflags parses a command line the way metaproxy's subcommands want it: --help (-h,
// -help, --h) before any "--" prints the usage on standard output, where `cmd --help | less`
// reads it, and is not an error; everything else is the flag package's.
package cmdflags

import (
	"flag"
	"io"
	"slices"
)

// Parse parses args into fs. On --help it prints fs's usage on stdout and reports helped, with no
// error and nothing parsed.
func Parse(fs *flag.FlagSet, args []string, stdout io.Writer) (helped bool, err error) {
	for _, a := range args {
		if a == "--" {
			break
		}
		if slices.Contains([]string{"-h", "-help", "--help", "--h"}, a) {
			fs.SetOutput(stdout)
			fs.Usage()
			return true, nil
		}
	}
	return false, fs.Parse(args)
}
