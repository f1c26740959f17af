// Command gradient is the Gradient CI node, worker and command-line client.
package main

import (
	"os"

	"github.com/gradient-ci/gradient/cmd"
)

func main() {
	os.Exit(cmd.Execute())
}
