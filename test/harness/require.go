package harness

import (
	"os"
	"strconv"
	"testing"
)

// Require stops t when what it needs is missing (ok false): what says what
// and how to get it. Under CI (CI=true, or any value strconv.ParseBool takes
// as true) the test fails, because a skipped test there would let a run pass
// that never ran it; elsewhere it is skipped.
//
// Tests call Require, never t.Skip, for a missing dependency (Chromium,
// root, the ip command, a network namespace). Work shortened by -short
// is not a skip: such tests run less, and still run.
func Require(t testing.TB, what string, ok bool) {
	t.Helper()
	if ok {
		return
	}
	if InCI() {
		t.Fatalf("missing dependency under CI: %s (CI=%s: a test that cannot run fails instead of skipping)", what, os.Getenv("CI"))
		return
	}
	t.Skipf("skipping: %s", what)
}

// InCI reports whether the tests run under CI: $CI set to true, as CI
// services and .ci/run set it.
func InCI() bool {
	ci, _ := strconv.ParseBool(os.Getenv("CI"))
	return ci
}
