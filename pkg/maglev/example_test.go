package maglev_test

import (
	"fmt"

	"github.com/sluice-lb/sluice/pkg/maglev"
)

func Example() {
	backends := []maglev.Backend{
		{Name: "10.0.0.1:80", Weight: 1},
		{Name: "10.0.0.2:80", Weight: 2},
		{Name: "10.0.0.3:80", Weight: 0}, // drained: keeps its index, gets no keys
	}
	t, err := maglev.New(backends, 0)
	if err != nil {
		panic(err)
	}
	h := uint64(0x9e3779b97f4a7c15) // a well-mixed hash of the flow
	fmt.Println(t.Size(), t.Len())
	fmt.Println(len(t.Preference(h, nil)), t.Preference(h, nil)[0] == t.Lookup(h))
	// Output:
	// 65537 3
	// 2 true
}
