package protocol

import (
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// ErrMalformed is wrapped by the errors Decode returns for a frame that is
// not a valid message. A connection that reads one is closed.
var ErrMalformed = errors.New("malformed frame")

// envelope is the frame layout: a type tag and the message's own CBOR
// encoding.
type envelope struct {
	Type Type            `cbor:"type"`
	Body cbor.RawMessage `cbor:"body"`
}

// Frames come from the other side of a connection and are untrusted. The
// decoder rejects indefinite lengths, tags and duplicate map keys, and
// bounds nesting, arrays and maps, so that a small frame cannot make it
// allocate much more than its own size or recurse deeply. The CBOR library
// has no limit on byte string length: the frame size bounds it, and
// validate bounds the data of each chunk.
var (
	encMode cbor.EncMode
	decMode cbor.DecMode
)

func init() {
	var err error
	encMode, err = cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		panic(err)
	}
	decMode, err = cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		IndefLength:      cbor.IndefLengthForbidden,
		TagsMd:           cbor.TagsForbidden,
		MaxNestedLevels:  16,
		MaxArrayElements: 1 << 20,
		MaxMapPairs:      1 << 16,
	}.DecMode()
	if err != nil {
		panic(err)
	}
}

// Encode returns the frame of m.
func Encode(m Message) ([]byte, error) {
	body, err := encMode.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %s message: %w", m.Type(), err)
	}
	frame, err := encMode.Marshal(envelope{Type: m.Type(), Body: body})
	if err != nil {
		return nil, fmt.Errorf("encode %s message: %w", m.Type(), err)
	}
	if len(frame) > MaxFrameSize {
		return nil, fmt.Errorf("encode %s message: %d bytes exceed the frame limit of %d", m.Type(), len(frame), MaxFrameSize)
	}
	return frame, nil
}

// Decode parses and checks one frame. Every error wraps ErrMalformed and
// names the message type and field at fault.
func Decode(frame []byte) (Message, error) {
	if len(frame) > MaxFrameSize {
		return nil, fmt.Errorf("%w: %d bytes exceed the frame limit of %d", ErrMalformed, len(frame), MaxFrameSize)
	}
	var env envelope
	if err := decMode.Unmarshal(frame, &env); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	m := newMessage(env.Type)
	if m == nil {
		return nil, fmt.Errorf("%w: unknown message type %q", ErrMalformed, truncate(string(env.Type)))
	}
	if len(env.Body) == 0 {
		return nil, fmt.Errorf("%w: %s message has no body", ErrMalformed, env.Type)
	}
	if err := decMode.Unmarshal(env.Body, m); err != nil {
		return nil, fmt.Errorf("%w: %s message: %w", ErrMalformed, env.Type, err)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("%w: %s message: %w", ErrMalformed, env.Type, err)
	}
	return m, nil
}

// truncate shortens an untrusted string for an error message.
func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
