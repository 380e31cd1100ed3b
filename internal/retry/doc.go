// Package retry holds the two mechanisms every loop that talks to Consul
// shares: an exponential backoff with jitter, and an outage log that turns
// a run of failures into two log lines. The balancer's watcher and the
// backend library's reporter use the same ones.
package retry
