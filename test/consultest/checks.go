package consultest

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"reflect"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"
)

// maxCheckOutput is Consul's default check_output_max_size.
const maxCheckOutput = 4096

// checkDef is a validated TTL check from a service registration.
type checkDef struct {
	api.AgentServiceCheck
	ttl             time.Duration
	deregisterAfter time.Duration
}

// checkDefs validates the Check and Checks of a registration, in that order,
// with Consul's messages where Consul has one.
func checkDefs(reg *api.AgentServiceRegistration) ([]checkDef, error) {
	var raw []*api.AgentServiceCheck
	if reg.Check != nil && !reflect.ValueOf(*reg.Check).IsZero() {
		raw = append(raw, reg.Check)
	}
	for _, c := range reg.Checks {
		if c != nil {
			raw = append(raw, c)
		}
	}
	defs := make([]checkDef, 0, len(raw))
	for _, c := range raw {
		def, err := newCheckDef(c)
		if err != nil {
			return nil, err
		}
		defs = append(defs, def)
	}
	return defs, nil
}

func newCheckDef(c *api.AgentServiceCheck) (checkDef, error) {
	def := checkDef{AgentServiceCheck: *c}
	var err error
	if def.ttl, err = parseDuration(c.TTL); err != nil {
		return def, badRequest("Request decode failed: %v", err)
	}
	if def.deregisterAfter, err = parseDuration(c.DeregisterCriticalServiceAfter); err != nil {
		return def, badRequest("Request decode failed: %v", err)
	}
	if len(c.Args) > 0 || c.HTTP != "" || c.TCP != "" || c.UDP != "" || c.GRPC != "" || c.H2PING != "" ||
		c.DockerContainerID != "" || c.AliasNode != "" || c.AliasService != "" {
		return def, badRequest("Invalid check: consultest implements TTL checks only " +
			"(HTTP, TCP, UDP, gRPC, H2PING, script, Docker and alias checks are not implemented by this test double)")
	}
	if c.Interval != "" && def.ttl > 0 {
		return def, badRequest("Invalid check: Interval and TTL cannot both be specified")
	}
	if def.ttl <= 0 {
		return def, badRequest("Invalid check: TTL must be > 0 for TTL checks")
	}
	if c.Status != "" && !validStatus(c.Status) {
		return def, badRequest("Status for checks must 'passing', 'warning', 'critical'")
	}
	return def, nil
}

func parseDuration(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("parsing duration %q: %w", s, err)
	}
	return d, nil
}

func validStatus(s string) bool {
	return s == api.HealthPassing || s == api.HealthWarning || s == api.HealthCritical
}

// newCheck builds the agent's record of the i-th of n checks of svc, named
// and identified as Consul's agent does, critical unless told otherwise.
func (a *Agent) newCheck(svc *api.AgentService, def checkDef, i, n int, now time.Time) *localCheck {
	id := def.CheckID
	if id == "" {
		id = "service:" + svc.ID
		if n > 1 {
			id += fmt.Sprintf(":%d", i+1)
		}
	}
	name := def.Name
	if name == "" {
		name = fmt.Sprintf("Service '%s' check", svc.Service)
	}
	status := def.Status
	if status == "" {
		status = api.HealthCritical
	}
	c := &localCheck{
		check: api.HealthCheck{
			Node:        a.opts.NodeName,
			CheckID:     id,
			Name:        name,
			Status:      status,
			Notes:       def.Notes,
			ServiceID:   svc.ID,
			ServiceName: svc.Service,
			ServiceTags: cloneTags(svc.Tags),
			Type:        "ttl",
		},
		ttl:     def.ttl,
		expires: now.Add(def.ttl),
	}
	if def.deregisterAfter > 0 {
		c.reapAfter = max(def.deregisterAfter, a.opts.MinDeregisterCriticalAfter)
	}
	return c
}

func cloneTags(tags []string) []string {
	return append([]string{}, tags...)
}

// updateCheckLocked is Consul's State.UpdateCheck: it tracks how long the
// check has been critical, ignores updates that change nothing, holds an
// update that changes only the output until the check_update_interval timer
// fires (consul#9113), and marks anything else for immediate sync.
func (a *Agent) updateCheckLocked(c *localCheck, status, output string, now time.Time) {
	if status == api.HealthCritical {
		if c.criticalSince.IsZero() {
			c.criticalSince = now
		}
	} else {
		c.criticalSince = time.Time{}
	}

	if c.check.Status == status && c.check.Output == output {
		return
	}
	if d := a.opts.CheckUpdateInterval; d > 0 && c.check.Status == status {
		c.check.Output = output
		if c.deferUntil.IsZero() {
			c.deferUntil = now.Add(d/2 + rand.N(d))
		}
		return
	}
	c.check.Status, c.check.Output = status, output
	c.inSync = false
}

// setTTLStatusLocked is a TTL check's SetStatus: it caps the output, applies
// the update and restarts the TTL.
func (a *Agent) setTTLStatusLocked(c *localCheck, status, output string, now time.Time) {
	if total := len(output); total > maxCheckOutput {
		output = fmt.Sprintf("%s ... (captured %d of %d bytes)", output[:maxCheckOutput], maxCheckOutput, total)
	}
	a.updateCheckLocked(c, status, output, now)
	c.lastOutput = output
	c.expires = now.Add(c.ttl)
}

// expireTTLLocked marks a check whose TTL ran out critical, with the output
// Consul writes then.
func (a *Agent) expireTTLLocked(c *localCheck, now time.Time) {
	output := "TTL expired"
	if c.lastOutput != "" {
		output += " (last output before timeout follows): " + c.lastOutput
	}
	c.expires = time.Time{} // like Consul's timer, re-armed only by the next update
	a.logger.Warn("check missed TTL, is now critical", zap.String("check", c.check.CheckID))
	a.updateCheckLocked(c, api.HealthCritical, output, now)
}

// handleCheckUpdate serves PUT /v1/agent/check/update/:id.
func (a *Agent) handleCheckUpdate(w http.ResponseWriter, r *http.Request) error {
	var update struct{ Status, Output string }
	if err := json.NewDecoder(r.Body).Decode(&update); err != nil {
		return badRequest("Request decode failed: %v", err)
	}
	if !validStatus(update.Status) {
		return badRequest("Invalid check status: '%s'", update.Status)
	}
	id := strings.TrimPrefix(r.URL.Path, "/v1/agent/check/update/")
	return a.updateTTL(r, id, update.Status, update.Output)
}

// handleCheckStatus serves the older PUT /v1/agent/check/pass|warn|fail/:id,
// whose ?note becomes the output.
func (a *Agent) handleCheckStatus(prefix, status string) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		id := strings.TrimPrefix(r.URL.Path, prefix)
		return a.updateTTL(r, id, status, r.URL.Query().Get("note"))
	}
}

func (a *Agent) updateTTL(r *http.Request, id, status, output string) error {
	authz, err := a.resolveToken(r)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.local.checks[id]
	if c == nil {
		return notFound("Unknown check ID %q. Ensure that the check ID is passed, not the check name.", id)
	}
	if err := authz.vet("service:write", c.check.ServiceName); err != nil {
		return err
	}
	if c.ttl == 0 {
		return serverError("CheckID %q does not have associated TTL", id)
	}
	a.setTTLStatusLocked(c, status, output, a.now())
	a.syncLocked()
	a.kickLoop()
	return nil
}
