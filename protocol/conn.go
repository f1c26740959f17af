package protocol

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/coder/websocket"
)

// Conn is one side of a connection between a node and a worker that
// carries Messages. Write and Close are safe for concurrent use; Read is
// called by one goroutine at a time.
type Conn interface {
	// Read returns the next message. A frame that does not decode returns
	// an error wrapping ErrMalformed and leaves the connection open: the
	// caller closes it with a reason. A connection closed by the other
	// side returns an error for which websocket.CloseStatus gives the
	// status. Cancelling ctx closes the connection.
	Read(ctx context.Context) (Message, error)
	// Write sends m. Cancelling ctx closes the connection.
	Write(ctx context.Context, m Message) error
	// Close closes the connection, telling the other side why. Later
	// calls do nothing.
	Close(code websocket.StatusCode, reason string) error
}

// Pinger is a Conn that can check that the other side still responds.
type Pinger interface {
	// Ping sends a ping and waits for the pong until ctx ends.
	Ping(ctx context.Context) error
}

// wsConn is a Conn over a WebSocket. Each message is one binary frame.
type wsConn struct {
	c *websocket.Conn
}

// NewWebSocketConn returns a Conn over c, which it owns from then on. It
// bounds frames that c reads to MaxFrameSize bytes: a larger frame closes
// the connection with websocket.StatusMessageTooBig.
func NewWebSocketConn(c *websocket.Conn) Conn {
	c.SetReadLimit(MaxFrameSize)
	return &wsConn{c: c}
}

func (w *wsConn) Read(ctx context.Context) (Message, error) {
	typ, frame, err := w.c.Read(ctx)
	if err != nil {
		return nil, err
	}
	if typ != websocket.MessageBinary {
		return nil, fmt.Errorf("%w: text frame: messages are binary CBOR", ErrMalformed)
	}
	return Decode(frame)
}

func (w *wsConn) Write(ctx context.Context, m Message) error {
	frame, err := Encode(m)
	if err != nil {
		return err
	}
	return w.c.Write(ctx, websocket.MessageBinary, frame)
}

// Ping implements Pinger with a WebSocket ping. It needs a Read running
// at the same time, which reads the pong.
func (w *wsConn) Ping(ctx context.Context) error {
	return w.c.Ping(ctx)
}

func (w *wsConn) Close(code websocket.StatusCode, reason string) error {
	return w.c.Close(code, closeReason(reason))
}

// closeReason shortens reason to what fits in a WebSocket close frame,
// 123 bytes.
func closeReason(reason string) string {
	if len(reason) > 120 {
		return reason[:120]
	}
	return reason
}

// Pipe returns the two ends of an in-memory connection. Messages go
// through Encode and Decode as on a WebSocket, so both ends behave as
// over the network: the in-process worker of a node uses it. A Write
// blocks while pipeBuffer messages wait for the other end to read them.
func Pipe() (Conn, Conn) {
	shared := &pipeShared{done: make(chan struct{})}
	ab := make(chan []byte, pipeBuffer)
	ba := make(chan []byte, pipeBuffer)
	return &pipeConn{shared: shared, in: ba, out: ab}, &pipeConn{shared: shared, in: ab, out: ba}
}

// pipeBuffer is how many frames each direction of a Pipe buffers, as a
// socket's buffer would.
const pipeBuffer = 16

// pipeShared is the state both ends of a Pipe see.
type pipeShared struct {
	once sync.Once
	done chan struct{}
	// err is what Read and Write return after done is closed; written
	// once before done is closed.
	err error
}

func (p *pipeShared) close(err error) {
	p.once.Do(func() {
		p.err = err
		close(p.done)
	})
}

type pipeConn struct {
	shared  *pipeShared
	in, out chan []byte
}

func (p *pipeConn) Read(ctx context.Context) (Message, error) {
	// Frames sent before a Close are delivered, as a WebSocket's are.
	select {
	case frame := <-p.in:
		return Decode(frame)
	default:
	}
	select {
	case frame := <-p.in:
		return Decode(frame)
	case <-p.shared.done:
		return nil, p.shared.err
	case <-ctx.Done():
		p.shared.close(errors.Join(ctx.Err(), websocket.CloseError{Code: websocket.StatusGoingAway, Reason: "context ended"}))
		return nil, ctx.Err()
	}
}

func (p *pipeConn) Write(ctx context.Context, m Message) error {
	frame, err := Encode(m)
	if err != nil {
		return err
	}
	// A Write after Close fails, as on a WebSocket. Without this check
	// the select below could still pick the free buffer slot, and the
	// other end would read a message sent after it closed the pipe.
	select {
	case <-p.shared.done:
		return p.shared.err
	default:
	}
	select {
	case p.out <- frame:
		return nil
	case <-p.shared.done:
		return p.shared.err
	case <-ctx.Done():
		p.shared.close(errors.Join(ctx.Err(), websocket.CloseError{Code: websocket.StatusGoingAway, Reason: "context ended"}))
		return ctx.Err()
	}
}

func (p *pipeConn) Close(code websocket.StatusCode, reason string) error {
	p.shared.close(websocket.CloseError{Code: code, Reason: closeReason(reason)})
	return nil
}
