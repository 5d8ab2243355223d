package secretfile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadRefusesFilesOthersCanRead(t *testing.T) {
	dir := t.TempDir()
	type file struct {
		mode     os.FileMode
		uid, gid int // -1: leave as created
	}
	tests := map[string]struct {
		f    file
		want string // "" = accepted
	}{
		"0600 own":             {f: file{0o600, -1, -1}},
		"0400 own":             {f: file{0o400, -1, -1}},
		"0640 root-owned":      {f: file{0o640, 0, 65534}},
		"0440 root-owned":      {f: file{0o440, 0, 65534}},
		"0644":                 {f: file{0o644, -1, -1}, want: "chmod o-rwx"},
		"0604":                 {f: file{0o604, -1, -1}, want: "chmod o-rwx"},
		"0640 owned by a user": {f: file{0o640, 65534, 65534}, want: "not owned by root"},
		"0620 owned by a user": {f: file{0o620, 65534, 65534}, want: "not owned by root"},
		// The owner reads it too: another unprivileged user may not own a secret this process
		// reads (only this process's user or root), and root's group may read, not write.
		"0600 owned by another user": {f: file{0o600, 65534, 65534}, want: "owned by uid 65534"},
		"0660 root-owned":            {f: file{0o660, 0, 65534}, want: "chmod 0640"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
			if err := os.WriteFile(p, []byte("s3cret\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if tc.f.uid >= 0 {
				if os.Geteuid() != 0 {
					t.Skip("needs root to give the file another owner")
				}
				if err := os.Chown(p, tc.f.uid, tc.f.gid); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Chmod(p, tc.f.mode); err != nil {
				t.Fatal(err)
			}
			b, err := Read(p)
			switch {
			case tc.want == "" && (err != nil || string(b) != "s3cret\n"):
				t.Errorf("Read = %q, %v; want the content", b, err)
			case tc.want != "" && (err == nil || !errors.Is(err, ErrTooOpen) || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Read = %q, %v; want an error saying %q", b, err, tc.want)
			}
			if cerr := Check(p); (cerr == nil) != (tc.want == "") {
				t.Errorf("Check = %v, Read = %v: they disagree", cerr, err)
			}
		})
	}
}

func TestReadFollowsLinksAndRefusesDirectories(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "..data", "key")
	os.MkdirAll(filepath.Dir(target), 0o755)
	os.WriteFile(target, []byte("k"), 0o644)
	link := filepath.Join(dir, "key")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	// The link itself is 0777; the file behind it is what counts.
	if _, err := Read(link); !errors.Is(err, ErrTooOpen) {
		t.Errorf("a 0644 file behind a link: %v", err)
	}
	os.Chmod(target, 0o600)
	if _, err := Read(link); err != nil {
		t.Errorf("a 0600 file behind a link: %v", err)
	}
	if _, err := Read(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a directory: %v", err)
	}
	if _, err := Read(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing file: %v", err)
	}
}
