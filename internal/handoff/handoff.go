// Package handoff carries a running sluice's open sockets to its successor
// during a zero-downtime upgrade, over a unix socket with SCM_RIGHTS.
//
// The conversation is a series of frames, each a 4-byte big-endian length
// and a JSON Frame, with the frame's file descriptors attached to its first
// byte. The old process sends Socket frames and then one Done frame; the new
// process answers with a Ready frame once it serves. The JSON is versioned
// and its fields are all optional, so later versions can add kinds of
// sockets (established connections, BPF links) without breaking older
// readers: a reader skips kinds it does not know and closes their fds.
package handoff

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// Version is the protocol version this package speaks.
const Version = 1

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

// Frame is one message of the conversation.
type Frame struct {
	Version int      `json:"version"`
	Sockets []Socket `json:"sockets,omitempty"`
	Done    bool     `json:"done,omitempty"`  // the last frame of the old process
	Ready   bool     `json:"ready,omitempty"` // the new process serves
	PID     int      `json:"pid,omitempty"`
}

// Send writes sockets (each with its FD set) to c, in frames of at most
// maxFDsPerFrame descriptors, then a Done frame. The descriptors stay open
// in the sender.
func Send(c *net.UnixConn, sockets []Socket) error {
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
	return writeFrame(c, Frame{Version: Version, Done: true, PID: os.Getpid()}, nil)
}

// Receive reads frames up to the Done frame and returns the sockets with
// their descriptors in this process. On error every descriptor received so
// far is closed.
func Receive(c *net.UnixConn) (sockets []Socket, err error) {
	defer func() {
		if err != nil {
			for _, s := range sockets {
				unix.Close(s.FD)
			}
			sockets = nil
		}
	}()
	for {
		f, fds, err := readFrame(c)
		if err != nil {
			for _, fd := range fds {
				unix.Close(fd)
			}
			return sockets, err
		}
		if len(fds) != len(f.Sockets) {
			for _, fd := range fds {
				unix.Close(fd)
			}
			return sockets, fmt.Errorf("frame lists %d sockets but carries %d descriptors", len(f.Sockets), len(fds))
		}
		for i, s := range f.Sockets {
			s.FD = fds[i]
			unix.CloseOnExec(s.FD)
			sockets = append(sockets, s)
		}
		if f.Done {
			return sockets, nil
		}
	}
}

// SendReady tells the old process that the new one serves.
func SendReady(c *net.UnixConn) error {
	return writeFrame(c, Frame{Version: Version, Ready: true, PID: os.Getpid()}, nil)
}

// WaitReady reads until a Ready frame arrives, or fails when the new
// process closes the socket (it exited) or c's deadline passes.
func WaitReady(c *net.UnixConn) error {
	for {
		f, fds, err := readFrame(c)
		for _, fd := range fds {
			unix.Close(fd)
		}
		if err != nil {
			return err
		}
		if f.Ready {
			return nil
		}
	}
}

func writeFrame(c *net.UnixConn, f Frame, fds []int) error {
	body, err := json.Marshal(f)
	if err != nil {
		return fmt.Errorf("encode handoff frame: %w", err)
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

// ErrFrame reports a malformed frame.
var ErrFrame = errors.New("malformed handoff frame")

func readFrame(c *net.UnixConn) (Frame, []int, error) {
	var f Frame
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
		return f, fds, fmt.Errorf("read handoff frame: %w", err)
	}
	if n == 0 {
		return f, fds, io.EOF
	}
	if n < 4 {
		if _, err := io.ReadFull(c, hdr[n:]); err != nil {
			return f, fds, fmt.Errorf("read handoff frame: %w", err)
		}
	}
	size := binary.BigEndian.Uint32(hdr)
	if size == 0 || size > maxFrame {
		return f, fds, fmt.Errorf("%w: length %d", ErrFrame, size)
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(c, body); err != nil {
		return f, fds, fmt.Errorf("read handoff frame: %w", err)
	}
	if err := json.Unmarshal(body, &f); err != nil {
		return f, fds, fmt.Errorf("%w: %v", ErrFrame, err)
	}
	if f.Version < 1 {
		return f, fds, fmt.Errorf("%w: version %d", ErrFrame, f.Version)
	}
	return f, fds, nil
}
