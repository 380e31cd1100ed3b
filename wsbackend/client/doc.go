// Package client is the Go client of a ws_balancer in assign mode: it asks
// the balancer's /assign endpoint for a backend ([RequestAssignment]) and
// opens the WebSocket to the URL it answers ([AssignAndDial], with
// gorilla/websocket). The answer is a [protocol.Assignment]; a refusal (503
// with Retry-After when every backend is full) is an [AssignError].
//
// It lives apart from package wsbackend so that backends, which never dial
// a balancer, do not link a WebSocket client, and clients do not link the
// backend library's Consul code.
package client
