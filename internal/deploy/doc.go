// Package deploy has no code, only tests. They check the deployment files
// that live outside the Go tree against sluice itself and against what
// docs/production.md promises of them: the systemd units and the firewall
// drop-in in scripts/ (required settings, systemd-analyze verify when it is
// installed), the example config and EnvironmentFile (they must parse with
// sluice's own flag parser), the Dockerfile, and the Kubernetes manifests in
// deploy/kubernetes/.
package deploy
