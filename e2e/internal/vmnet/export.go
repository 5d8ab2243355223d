//go:build e2e

package vmnet

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
)

// CreateNamespace creates namespace ns outside any Fabric (e2e/internal/ovnlab's VMs), recorded
// like the Fabric's own so that the next New removes it if this run could not, and runs cmds (each
// an argv) after it; on error it removes the namespace again. DeleteNamespace removes it.
func CreateNamespace(ctx context.Context, ns string, cmds ...[]string) error {
	var f Fabric
	return f.createNamespace(ctx, ns, cmds)
}

// DeleteNamespace deletes namespace ns if it exists, and its record.
func DeleteNamespace(ctx context.Context, ns string) error { return deleteNamespace(ctx, ns) }

// Track records namespace ns, which someone else creates (the chassis component under test, the
// agent), as this run's: DeleteNamespace removes it, and so does the next New after a crash.
func Track(ns string) error {
	if err := os.MkdirAll(markerDir, 0o755); err != nil {
		return fmt.Errorf("vmnet: %w", err)
	}
	if err := os.WriteFile(filepath.Join(markerDir, ns), []byte(ownerID()+"\n"), 0o644); err != nil {
		return fmt.Errorf("vmnet: %w", err)
	}
	return nil
}

// OwnerID identifies this process across pid reuse; OwnerAlive says whether such an id's process
// still runs. Fixtures record it beside what they leave on the host.
func OwnerID() string { return ownerID() }

// OwnerAlive reports whether the process identified by id (from OwnerID) still runs.
func OwnerAlive(id string) bool { return ownerAlive(id) }
