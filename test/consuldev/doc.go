// Package consuldev runs real Consul agents for tests: `consul agent -dev`
// (Consul 1.14.11, built once by test/consul/build.sh) on free loopback
// ports, with ACLs when a test needs them, stopped and restarted for outage
// tests, and stopped when the test (or, for the shared agent, the package's
// tests) end.
//
// Nothing here imitates Consul. Where a test needs a fault a real agent
// cannot produce (a refused or stalled connection) or needs to count the
// requests a client sends, it puts a Front, a small HTTP proxy, before the
// real agent.
//
// A package that shares one agent among its tests runs them through Main:
//
//	func TestMain(m *testing.M) { os.Exit(consuldev.Main(m)) }
//
// and gets the agent with Shared; tests keep apart by service names.
//
// Tools outside tests (test/consulscale) start agents with Launch: a dev
// server, a single server keeping its Raft log on disk, or client agents
// joined to a server, each with the same ports, configuration and process
// handling as the tests' agents.
package consuldev
