// Package smallfile reads the small files an operator points sluice at
// (the config file, a backends file, TLS certificates and keys) with the
// checks every such read needs: a regular file, of bounded size, and an
// open that cannot block.
package smallfile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// Read returns the contents of the regular file at path, which must hold at
// most limit bytes. It opens path with O_NONBLOCK, which a regular file
// ignores: a plain open of a FIFO waits for a writer, for ever if none
// comes, and so would start-up, a reload or a health check rereading its
// certificates. A FIFO, a folder or a device is refused as not a regular
// file.
func Read(path string, limit int) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil {
		return nil, err
	} else if !st.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	data, err := io.ReadAll(io.LimitReader(f, int64(limit)+1))
	if err != nil {
		return nil, err
	}
	if len(data) > limit {
		return nil, fmt.Errorf("larger than %d bytes", limit)
	}
	return data, nil
}
