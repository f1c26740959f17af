package wire

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/gradient-ci/gradient/cache/narinfo"
)

const (
	// BuildsTopic is the GossipSub topic of build announcements.
	BuildsTopic = "/gradient/builds/1"

	// MaxBuildMessageSize bounds an encoded build announcement in bytes.
	MaxBuildMessageSize = 16 << 10
	// MaxOutputs bounds the outputs listed in a build announcement.
	MaxOutputs = 64
	// MaxBuildTTL bounds how long a build announcement stays valid
	// without a refresh, and MaxETA how far ahead its ETA may lie.
	MaxBuildTTL = time.Hour
	MaxETA      = 7 * 24 * time.Hour
)

// BuildEvent is the kind of a build announcement: a start or an end.
type BuildEvent string

const (
	// BuildStarted announces or refreshes a build in progress.
	BuildStarted BuildEvent = "started"
	// BuildSucceeded ends a build whose outputs the sender now provides.
	BuildSucceeded BuildEvent = "succeeded"
	// BuildFailed ends a build that failed.
	BuildFailed BuildEvent = "failed"
	// BuildCancelled ends a build that stopped without a result.
	BuildCancelled BuildEvent = "cancelled"
)

// BuildMessage is a build announcement. The sender is the GossipSub
// author of the message, whose signature GossipSub checks, so the message
// does not name it. Times are relative to sending, so peers need no
// synchronised clocks.
type BuildMessage struct {
	Event BuildEvent `json:"event"`
	// DrvPath is the absolute store path of the derivation.
	DrvPath string `json:"drv_path"`
	// ETA is how long after sending the build should end, for
	// BuildStarted.
	ETA time.Duration `json:"eta_ns,omitempty"`
	// TTL is how long after sending the announcement stays valid without
	// a refresh, for BuildStarted.
	TTL time.Duration `json:"ttl_ns,omitempty"`
	// Outputs maps output names to store paths, for BuildSucceeded.
	Outputs map[string]string `json:"outputs,omitempty"`
}

// Check reports the first invalid field of m.
func (m *BuildMessage) Check() error {
	if _, _, err := narinfo.SplitStorePath(m.DrvPath); err != nil || !strings.HasSuffix(m.DrvPath, ".drv") {
		return fmt.Errorf("%w: drv_path %q is not a .drv store path", ErrMalformed, m.DrvPath)
	}

	switch m.Event {
	case BuildStarted:
		if m.TTL <= 0 || m.TTL > MaxBuildTTL {
			return fmt.Errorf("%w: ttl_ns %d is outside (0, %s]", ErrMalformed, m.TTL, MaxBuildTTL)
		}

		if m.ETA < 0 || m.ETA > MaxETA {
			return fmt.Errorf("%w: eta_ns %d is outside [0, %s]", ErrMalformed, m.ETA, MaxETA)
		}
	case BuildSucceeded, BuildFailed, BuildCancelled:
	default:
		return fmt.Errorf("%w: unknown event %q", ErrMalformed, m.Event)
	}

	if len(m.Outputs) > MaxOutputs {
		return fmt.Errorf("%w: %d outputs, more than %d", ErrMalformed, len(m.Outputs), MaxOutputs)
	}

	for name, path := range m.Outputs {
		if name == "" || len(name) > 64 {
			return fmt.Errorf("%w: output name %q must have 1 to 64 bytes", ErrMalformed, name)
		}

		if _, _, err := narinfo.SplitStorePath(path); err != nil {
			return fmt.Errorf("%w: output %q: %w", ErrMalformed, name, err)
		}
	}

	return nil
}

// EncodeBuild checks m and encodes it as JSON.
func EncodeBuild(m BuildMessage) ([]byte, error) {
	if err := m.Check(); err != nil {
		return nil, fmt.Errorf("encode build message: %w", err)
	}

	data, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode build message: %w", err)
	}

	if len(data) > MaxBuildMessageSize {
		return nil, fmt.Errorf("encode build message: %d bytes, more than %d", len(data), MaxBuildMessageSize)
	}

	return data, nil
}

// DecodeBuild decodes and checks a build announcement of at most
// MaxBuildMessageSize bytes. Unknown fields are ignored, so a later
// version may add some.
func DecodeBuild(data []byte) (BuildMessage, error) {
	if len(data) > MaxBuildMessageSize {
		return BuildMessage{}, fmt.Errorf("decode build message: %w: %d bytes, more than %d", ErrMalformed, len(data), MaxBuildMessageSize)
	}

	dec := json.NewDecoder(bytes.NewReader(data))

	var m BuildMessage
	if err := dec.Decode(&m); err != nil {
		return BuildMessage{}, fmt.Errorf("decode build message: %w: %w", ErrMalformed, err)
	}

	if dec.More() {
		return BuildMessage{}, fmt.Errorf("decode build message: %w: data after the JSON object", ErrMalformed)
	}

	if err := m.Check(); err != nil {
		return BuildMessage{}, fmt.Errorf("decode build message: %w", err)
	}

	return m, nil
}
