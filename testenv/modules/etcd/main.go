// Wrapper so that etcd builds from its Go module (server/v3 has replace directives
// that only work inside etcd's own repository).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
