// Package handoff carries a running sluice's open sockets, and what it
// knows of its backends, to its successor during a zero-downtime upgrade,
// over a unix socket with SCM_RIGHTS.
//
// The conversation is a series of frames, each a 4-byte big-endian length
// and a JSON Frame, with the frame's file descriptors attached to its first
// byte. The old process sends Socket frames, then Backend frames (its
// services' drains and health verdicts, what HAProxy keeps in its server
// state file), then one Done frame; the new process answers with a Ready
// frame once it serves, or with a Stopping frame when it was told to stop
// before that (it drains what it accepted and exits; the old process goes
// on serving). An old process stopped before it has seen a Ready frame
// stops the new one too, and sends it a Keep frame first: it drains
// reading the sockets the two share, and the new one, should it have
// sent Ready meanwhile, must leave them to it (see Kept). The JSON is
// versioned and its fields are all
// optional, so later versions can add kinds of sockets (established
// connections, BPF links) and new fields without breaking older readers: a
// reader skips socket kinds it does not know and closes their fds, and
// ignores fields it does not know (a version-1 reader, the backends).
package handoff

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Version is the protocol version this package speaks. Version 2 adds
// Frame.Backends, version 3 Frame.Stopping, version 4 Frame.Keep; a reader
// accepts every version from 1.
const Version = 4

// ReadsEveryUDPSocket is the first version whose receiver reads every UDP
// listening socket handed to it, however many loops it has: an older one
// closes those beyond its loop count, so its predecessor must not keep
// them, unread, in the SO_REUSEPORT group while it drains.
const ReadsEveryUDPSocket = 2

// maxFDsPerFrame stays under the kernel's SCM_MAX_FD (253).
const maxFDsPerFrame = 200

// maxFrame bounds a frame's JSON.
const maxFrame = 1 << 20

// Socket kinds.
const (
	KindListener = "listener" // a service's listening socket (TCP or UDP)
	KindAdmin    = "admin"    // the admin HTTP endpoint's listening socket
	KindXDPLink  = "xdp-link" // a bpf_link of the XDP firewall; Addr is the interface, Proto the mode
)

// Socket describes one passed file descriptor.
type Socket struct {
	Kind    string `json:"kind"`
	Service string `json:"service,omitempty"`
	Proto   string `json:"proto,omitempty"`
	Addr    string `json:"addr,omitempty"` // the bound address, ip:port
	// FD is filled in by Receive: the descriptor in the receiving process.
	FD int `json:"-"`
}

// Backend is what a service of the old process knows of one backend beyond
// its configuration, for the service of the same name in the new process
// to start from. A backend the service remembers after it left (see
// balancer.Service) has Left set.
type Backend struct {
	Service string `json:"service"`
	Addr    string `json:"addr"`              // ip:port
	Drained bool   `json:"drained,omitempty"` // an operator drained it
	// Down is the health verdict: false is up. It is down after its
	// active checks failed, or its connects on the data path.
	Down      bool   `json:"down,omitempty"`
	LastCheck *Check `json:"last_check,omitempty"`
	// Left is when the backend left the service; zero for a member.
	Left time.Time `json:"left,omitzero"`
}

// Check is the result of a backend's last active health check.
type Check struct {
	Time     time.Time     `json:"time"`
	OK       bool          `json:"ok"`
	Error    string        `json:"error,omitempty"`
	Duration time.Duration `json:"duration_ns"`
}

// Frame is one message of the conversation.
type Frame struct {
	Version  int       `json:"version"`
	Sockets  []Socket  `json:"sockets,omitempty"`
	Backends []Backend `json:"backends,omitempty"` // since version 2; frames with backends carry no descriptors
	Done     bool      `json:"done,omitempty"`     // the last frame of the old process
	Ready    bool      `json:"ready,omitempty"`    // the new process serves
	// Stopping: the new process was told to stop before it served; it
	// drains the connections it accepted and exits (since version 3).
	Stopping bool `json:"stopping,omitempty"`
	// DrainTimeout comes with Stopping: the new process's own
	// --drain-timeout, which bounds its drain (0 from a new process
	// that predates the field).
	DrainTimeout time.Duration `json:"drain_timeout_ns,omitempty"`
	// Keep: the old process was stopped before it saw the new one take
	// over, and drains reading the sockets the two share; it stops the new
	// one too (since version 4).
	Keep bool `json:"keep,omitempty"`
	PID  int  `json:"pid,omitempty"`
}

// Send writes sockets (each with its FD set) to c, in frames of at most
// maxFDsPerFrame descriptors, then backends, in frames of at most
// maxBackendBytes of JSON, then a Done frame. The descriptors stay open
// in the sender. A backend too large for a frame on its own (a check
// error of about a megabyte) goes without its last check.
func Send(c *net.UnixConn, sockets []Socket, backends []Backend) error {
	for len(sockets) > 0 {
		n := min(len(sockets), maxFDsPerFrame)
		chunk := sockets[:n]
		sockets = sockets[n:]
		fds := make([]int, n)
		for i, s := range chunk {
			fds[i] = s.FD
		}
		if err := writeFrame(c, Frame{Version: Version, Sockets: chunk}, fds); err != nil {
			return err
		}
	}
	var chunk []Backend
	size := 0
	for _, b := range backends {
		n, err := encodedSize(b)
		if err == nil && n > maxBackendBytes {
			b.LastCheck = nil
			n, err = encodedSize(b)
		}
		if err != nil {
			return err
		}
		if n > maxBackendBytes {
			continue // a service name or address of a megabyte: not one of ours
		}
		if size+n > maxBackendBytes {
			if err := writeFrame(c, Frame{Version: Version, Backends: chunk}, nil); err != nil {
				return err
			}
			chunk, size = nil, 0
		}
		chunk = append(chunk, b)
		size += n + 1 // and a comma
	}
	if len(chunk) > 0 {
		if err := writeFrame(c, Frame{Version: Version, Backends: chunk}, nil); err != nil {
			return err
		}
	}
	return writeFrame(c, Frame{Version: Version, Done: true, PID: os.Getpid()}, nil)
}

// maxBackendBytes bounds the JSON of the backends of one frame, leaving
// room under maxFrame for the rest of the frame.
const maxBackendBytes = maxFrame - 1024

func encodedSize(b Backend) (int, error) {
	body, err := json.Marshal(b)
	if err != nil {
		return 0, fmt.Errorf("encode handoff backend: %w", err)
	}
	return len(body), nil
}

// Receive reads frames up to the Done frame and returns the sockets, with
// their descriptors in this process, and the backends. A sender of
// version 1 sends no backends. On error every descriptor received so far
// is closed.
func Receive(c *net.UnixConn) (sockets []Socket, backends []Backend, err error) {
	defer func() {
		if err != nil {
			for _, s := range sockets {
				unix.Close(s.FD)
			}
			sockets, backends = nil, nil
		}
	}()
	for {
		f, fds, err := readFrame(c)
		if err != nil {
			for _, fd := range fds {
				unix.Close(fd)
			}
			return sockets, nil, err
		}
		if len(fds) != len(f.Sockets) {
			for _, fd := range fds {
				unix.Close(fd)
			}
			return sockets, nil, fmt.Errorf("frame lists %d sockets but carries %d descriptors", len(f.Sockets), len(fds))
		}
		for i, s := range f.Sockets {
			s.FD = fds[i]
			unix.CloseOnExec(s.FD)
			sockets = append(sockets, s)
		}
		backends = append(backends, f.Backends...)
		if f.Done {
			return sockets, backends, nil
		}
	}
}

// SendReady tells the old process that the new one serves.
func SendReady(c *net.UnixConn) error {
	return writeFrame(c, Frame{Version: Version, Ready: true, PID: os.Getpid()}, nil)
}

// SendStopping tells the old process that the new one was told to stop
// before it served: it will not take over, and it drains the connections
// it accepted meanwhile, for up to drain, so it must be left to finish
// rather than killed.
func SendStopping(c *net.UnixConn, drain time.Duration) error {
	return writeFrame(c, Frame{Version: Version, Stopping: true, DrainTimeout: drain, PID: os.Getpid()}, nil)
}

// SendKeep tells the new process that this one, stopped before it saw the
// new one take over, drains reading the sockets they share. Send it
// before telling the new process to stop (SIGTERM), so that it is there
// to read when the stop comes.
func SendKeep(c *net.UnixConn) error {
	return writeFrame(c, Frame{Version: Version, Keep: true, PID: os.Getpid()}, nil)
}

// KeepWait is how long the new process waits in Kept: the old process
// sends Keep or closes the socket once it has read the Ready frame, and
// told systemd of the new main process (which may take it 5 s).
const KeepWait = 10 * time.Second

// Kept is for a new process that sent Ready and is stopping: it reads on
// until the old process sends Keep (true) or closes the socket, or wait
// passes (false). An old process that saw the Ready frame has stopped
// reading the sockets the two share, and closes its end; one stopped
// before it saw it drains reading them, and says so before it stops the
// new process (SendKeep), so a Keep frame sent then has arrived when the
// stop comes. An old process of version 3 or before sends none.
func Kept(c *net.UnixConn, wait time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(wait))
	defer c.SetReadDeadline(time.Time{})
	for {
		f, fds, err := readFrame(c)
		for _, fd := range fds {
			unix.Close(fd)
		}
		if err != nil {
			return false
		}
		if f.Keep {
			return true
		}
	}
}

// StoppingError is WaitReady's error for a Stopping frame. It matches
// ErrStopping with errors.Is.
type StoppingError struct {
	// Drain is the new process's drain timeout, 0 when it did not say.
	Drain time.Duration
}

func (e *StoppingError) Error() string { return ErrStopping.Error() }

// Is reports whether target is ErrStopping.
func (e *StoppingError) Is(target error) bool { return target == ErrStopping }

// WaitReady reads until a Ready frame arrives and returns the version the
// new process speaks. It fails with a *StoppingError (errors.Is
// ErrStopping) when a Stopping frame arrives instead, and with another
// error when the new process closes the socket (it exited) or c's deadline
// passes.
func WaitReady(c *net.UnixConn) (version int, err error) {
	for {
		f, fds, err := readFrame(c)
		for _, fd := range fds {
			unix.Close(fd)
		}
		if err != nil {
			return 0, err
		}
		if f.Ready {
			return f.Version, nil
		}
		if f.Stopping {
			return f.Version, &StoppingError{Drain: max(f.DrainTimeout, 0)}
		}
	}
}

func writeFrame(c *net.UnixConn, f Frame, fds []int) error {
	body, err := json.Marshal(f)
	if err != nil {
		return fmt.Errorf("encode handoff frame: %w", err)
	}
	if len(body) > maxFrame {
		return fmt.Errorf("encode handoff frame: %d bytes, more than the %d a reader takes", len(body), maxFrame)
	}
	msg := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(body)), uint32(len(body)))
	msg = append(msg, body...)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, _, err := c.WriteMsgUnix(msg, oob, nil)
	if err != nil {
		return fmt.Errorf("send handoff frame: %w", err)
	}
	if n < len(msg) {
		// The descriptors went with the first byte; the rest is plain.
		if _, err := c.Write(msg[n:]); err != nil {
			return fmt.Errorf("send handoff frame: %w", err)
		}
	}
	return nil
}

var (
	// ErrFrame reports a malformed frame.
	ErrFrame = errors.New("malformed handoff frame")
	// ErrStopping is WaitReady's error when the new process says it was
	// told to stop before it served.
	ErrStopping = errors.New("the new process was told to stop before it served")
)

func readFrame(c *net.UnixConn) (Frame, []int, error) {
	var f Frame
	body, fds, err := readBody(c)
	if err != nil {
		return f, fds, err
	}
	if err := json.Unmarshal(body, &f); err != nil {
		return f, fds, fmt.Errorf("%w: %v", ErrFrame, err)
	}
	if f.Version < 1 {
		return f, fds, fmt.Errorf("%w: version %d", ErrFrame, f.Version)
	}
	return f, fds, nil
}

// readBody reads one frame's JSON and the descriptors that came with it.
func readBody(c *net.UnixConn) ([]byte, []int, error) {
	hdr := make([]byte, 4)
	oob := make([]byte, unix.CmsgSpace(4*maxFDsPerFrame))
	n, oobn, _, _, err := c.ReadMsgUnix(hdr, oob)
	var fds []int
	if oobn > 0 {
		msgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
		if perr == nil {
			for _, m := range msgs {
				got, rerr := unix.ParseUnixRights(&m)
				if rerr == nil {
					fds = append(fds, got...)
				}
			}
		}
	}
	if err != nil {
		return nil, fds, fmt.Errorf("read handoff frame: %w", err)
	}
	if n == 0 {
		return nil, fds, io.EOF
	}
	if n < 4 {
		if _, err := io.ReadFull(c, hdr[n:]); err != nil {
			return nil, fds, fmt.Errorf("read handoff frame: %w", err)
		}
	}
	size := binary.BigEndian.Uint32(hdr)
	if size == 0 || size > maxFrame {
		return nil, fds, fmt.Errorf("%w: length %d", ErrFrame, size)
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(c, body); err != nil {
		return nil, fds, fmt.Errorf("read handoff frame: %w", err)
	}
	return body, fds, nil
}
