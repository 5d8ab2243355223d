//go:build e2e

// Package clients runs metadata clients inside VM namespaces: curl, and cloud-init's own
// OpenStack metadata reader (e2e/scripts/cloudinit_read.py, a client nobody here wrote).
package clients

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/metaproxy/metaproxy/e2e/internal/vmnet"
)

// MetadataURL is where VMs reach the metadata service.
const MetadataURL = "http://169.254.169.254"

// Response is what curl received.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// Curl sends one request with curl from inside vm's namespace. path is either a path on
// MetadataURL ("/openstack/latest/meta_data.json") or a full URL. header is sent as given (curl's
// "Expect: 100-continue" is suppressed unless header sets Expect); body, if not nil, is sent as is.
// A transport failure (no route, refused, timeout) is an error; any HTTP status is a Response.
func Curl(ctx context.Context, vm *vmnet.VM, method, path string, header http.Header, body []byte) (Response, error) {
	return CurlIn(ctx, vm.Namespace, method, path, header, body)
}

// CurlIn is Curl in any namespace ("" runs curl in the test's own namespace).
func CurlIn(ctx context.Context, ns, method, path string, header http.Header, body []byte) (Response, error) {
	url := path
	if strings.HasPrefix(path, "/") {
		url = MetadataURL + path
	}
	hdrFile, err := os.CreateTemp("", "curl-headers-")
	if err != nil {
		return Response{}, err
	}
	hdrFile.Close()
	defer os.Remove(hdrFile.Name())

	argv := []string{"curl", "-sS", "--globoff", "--max-time", "30", "-X", method, "-D", hdrFile.Name(), "-o", "-"}
	if header.Get("Expect") == "" {
		argv = append(argv, "-H", "Expect:")
	}
	for k, vs := range header {
		for _, v := range vs {
			argv = append(argv, "-H", k+": "+v)
		}
	}
	if body != nil {
		argv = append(argv, "--data-binary", "@-")
	}
	argv = append(argv, url)

	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if ns != "" {
		cmd = vmnet.Command(ctx, ns, argv...)
	}
	if body != nil {
		cmd.Stdin = bytes.NewReader(body)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return Response{}, fmt.Errorf("curl %s %s in %q: %w: %s", method, url, ns, err, strings.TrimSpace(stderr.String()))
	}
	raw, err := os.ReadFile(hdrFile.Name())
	if err != nil {
		return Response{}, err
	}
	status, hdr, err := parseHeaders(raw)
	if err != nil {
		return Response{}, fmt.Errorf("curl %s %s: %w", method, url, err)
	}
	return Response{Status: status, Header: hdr, Body: stdout.Bytes()}, nil
}

// parseHeaders reads the last header block curl dumped (after any 100 Continue).
func parseHeaders(raw []byte) (int, http.Header, error) {
	blocks := strings.Split(strings.ReplaceAll(string(raw), "\r\n", "\n"), "\n\n")
	var last string
	for _, b := range blocks {
		if strings.TrimSpace(b) != "" {
			last = strings.TrimLeft(b, "\n")
		}
	}
	if last == "" {
		return 0, nil, errors.New("no response headers")
	}
	r := textproto.NewReader(bufio.NewReader(strings.NewReader(last + "\n\n")))
	line, err := r.ReadLine()
	if err != nil {
		return 0, nil, err
	}
	f := strings.Fields(line)
	if len(f) < 2 {
		return 0, nil, fmt.Errorf("bad status line %q", line)
	}
	status, err := strconv.Atoi(f[1])
	if err != nil {
		return 0, nil, fmt.Errorf("bad status line %q", line)
	}
	mh, err := r.ReadMIMEHeader()
	if err != nil && len(mh) == 0 {
		return status, http.Header{}, nil
	}
	return status, http.Header(mh), nil
}

// CloudInitOptions configures CloudInitRead.
type CloudInitOptions struct {
	// URL is the metadata base URL. Empty: MetadataURL.
	URL string
	// Require lists items that must have been read: "userdata", "networkdata", "vendordata", "ec2".
	// meta_data.json is always required (by cloud-init itself).
	Require []string
	// Script is the path of cloudinit_read.py. Empty: e2e/scripts/cloudinit_read.py in this
	// source tree.
	Script string
}

// CloudInitResult is what cloud-init's MetadataReader.read_v2() read.
type CloudInitResult struct {
	Metadata struct {
		UUID       string            `json:"uuid"`
		Hostname   string            `json:"hostname"`
		Name       string            `json:"name"`
		ProjectID  string            `json:"project_id"`
		PublicKeys map[string]string `json:"public_keys"`
		Meta       map[string]string `json:"meta"`
		// InstanceID and LocalHostname are the keys cloud-init copies for its own use.
		InstanceID    string `json:"instance-id"`
		LocalHostname string `json:"local-hostname"`
	} `json:"metadata"`
	UserData    []byte          `json:"-"`
	UserDataB64 *string         `json:"userdata_b64"`
	NetworkData json.RawMessage `json:"networkdata"`
	VendorData  json.RawMessage `json:"vendordata"`
	EC2Metadata map[string]any  `json:"ec2_metadata"`
	// Raw is the script's whole output.
	Raw []byte `json:"-"`
}

// CloudInitRead runs cloud-init's OpenStack metadata reader inside vm's namespace. An error holds
// the reader's own message (cloud-init's NonReadable/BrokenMetadata, or a missing required item).
func CloudInitRead(ctx context.Context, vm *vmnet.VM, o CloudInitOptions) (CloudInitResult, error) {
	if o.URL == "" {
		o.URL = MetadataURL
	}
	if o.Script == "" {
		o.Script = defaultScript()
	}
	argv := []string{"/usr/bin/python3", o.Script, "--url", o.URL}
	if len(o.Require) > 0 {
		argv = append(argv, "--require", strings.Join(o.Require, ","))
	}
	cmd := vmnet.Command(ctx, vm.Namespace, argv...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	res := CloudInitResult{Raw: stdout.Bytes()}
	if runErr != nil {
		return res, fmt.Errorf("cloud-init reader in %s: %w: %s", vm.Namespace, runErr, strings.TrimSpace(stderr.String()))
	}
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		return res, fmt.Errorf("cloud-init reader output: %w", err)
	}
	if res.UserDataB64 != nil {
		ud, err := base64.StdEncoding.DecodeString(*res.UserDataB64)
		if err != nil {
			return res, fmt.Errorf("cloud-init reader user data: %w", err)
		}
		res.UserData = ud
	}
	return res, nil
}

// defaultScript locates e2e/scripts/cloudinit_read.py from this file's place in the source tree,
// falling back to ./scripts (go test runs in e2e/).
func defaultScript() string {
	if _, file, _, ok := runtime.Caller(0); ok {
		p := filepath.Join(filepath.Dir(file), "..", "..", "scripts", "cloudinit_read.py")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return filepath.Join("scripts", "cloudinit_read.py")
}
