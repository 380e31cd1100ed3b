package affinity

import "flag"

// long runs the measurements behind docs/affinity.md: the long simulation,
// the co-location table and the vnode spread. Without it the same code runs
// at a scale that finishes in seconds under -race, and asserts.
var long = flag.Bool("affinity.long", false, "run the long simulation and print the tables of docs/affinity.md")
