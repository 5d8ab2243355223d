// Package version carries the release version stamped into the binaries at link time
// (`-ldflags -X github.com/metaproxy/metaproxy/pkg/version.Version=...`, see the Makefile).
package version

import "runtime/debug"

// Version is set by the linker; "dev" for plain `go build`.
var Version = "dev"

// String returns the version, with the VCS revision when the build recorded one.
func String() string {
	v := Version
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += " (" + s.Value[:12] + ")"
			}
		}
	}
	return v
}
