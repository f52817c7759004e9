// Package e2e holds end-to-end tests of the real binaries: cmd/sluice and
// cmd/sluice-bench are built into a temporary directory and run as separate
// processes, configured only through their command lines and config files,
// and observed only from outside (connections, datagrams, the admin
// endpoint's metrics, exit status).
//
// The tests need root: they create network namespaces joined by a veth pair
// and attach the XDP firewall to it. Without root, or without iproute2's ip
// command, they skip and say why. Every address they use is inside
// 198.18.0.0/15, the benchmarking range, in namespaces the test creates
// itself, so no packet leaves the machine; namespaces, links and processes
// are removed when the test ends, failed or not.
//
// The package has no non-test code.
package e2e
