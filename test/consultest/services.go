package consultest

import (
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"
)

// Service meta limits, from Consul's structs package.
const (
	metaMaxPairs       = 64
	metaKeyMaxLength   = 128
	metaValueMaxLength = 512
	metaReservedPrefix = "consul-"
)

var metaKeyFormat = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`).MatchString

// defaultMaintReason is the note Consul gives a maintenance check without a
// reason.
const defaultMaintReason = "Maintenance mode is enabled for this service, but no reason was provided. This is a default message."

// handleServiceRegister serves PUT /v1/agent/service/register, validating in
// the order Consul's AgentRegisterService does.
func (a *Agent) handleServiceRegister(w http.ResponseWriter, r *http.Request) error {
	var reg api.AgentServiceRegistration
	if err := json.NewDecoder(r.Body).Decode(&reg); err != nil {
		return badRequest("Request decode failed: %v", err)
	}
	if reg.Name == "" {
		return badRequest("Missing service name")
	}
	if isAnyAddress(reg.Address) {
		return badRequest("Invalid service address")
	}
	authz, err := a.resolveToken(r)
	if err != nil {
		return err
	}
	if err := validateWeights(reg.Weights); err != nil {
		return badRequest("Invalid Weights: %v", err)
	}
	if err := validateServiceMeta(reg.Meta); err != nil {
		return badRequest("Invalid Service Meta: %v", err)
	}
	if reg.Kind != "" || reg.Connect != nil || reg.Proxy != nil || len(reg.Ports) > 0 {
		return badRequest("consultest: service kinds, Connect, proxies and named ports are not implemented by this test double")
	}
	defs, err := checkDefs(&reg)
	if err != nil {
		return err
	}
	if err := authz.vet("service:write", reg.Name); err != nil {
		return err
	}

	svc := newService(&reg)
	params := r.URL.Query()
	_, replace := params["replace-existing-checks"]
	replace = replace && (params.Get("replace-existing-checks") == "" || params.Get("replace-existing-checks") == "true")

	a.mu.Lock()
	defer a.mu.Unlock()
	a.addServiceLocked(svc, defs, replace, a.now())
	a.syncLocked()
	a.kickLoop()
	return nil
}

// newService turns a registration into the service the agent stores, with
// the defaults Consul fills in.
func newService(reg *api.AgentServiceRegistration) api.AgentService {
	svc := api.AgentService{
		ID:                reg.ID,
		Service:           reg.Name,
		Tags:              cloneTags(reg.Tags),
		Meta:              maps.Clone(reg.Meta),
		Port:              reg.Port,
		Address:           reg.Address,
		TaggedAddresses:   maps.Clone(reg.TaggedAddresses),
		Weights:           api.AgentWeights{Passing: 1, Warning: 1},
		EnableTagOverride: reg.EnableTagOverride,
	}
	if svc.ID == "" {
		svc.ID = reg.Name
	}
	if svc.Meta == nil {
		svc.Meta = map[string]string{}
	}
	if reg.Weights != nil {
		svc.Weights = *reg.Weights
	}
	return svc
}

// addServiceLocked is the agent's AddService. Re-registering an ID replaces
// the service; checks that existed keep their status and output (Consul
// snapshots them so that a re-registration, say to change meta, does not
// flap health), their TTLs restart, and their critical clock restarts as
// Consul's new check state does. Checks the new definition omits stay unless
// replace (?replace-existing-checks) is set.
func (a *Agent) addServiceLocked(svc api.AgentService, defs []checkDef, replace bool, now time.Time) {
	old := a.local.services[svc.ID]
	a.local.services[svc.ID] = &localService{
		svc:    svc,
		inSync: old != nil && sameService(old.svc, svc),
	}

	kept := make(map[string]bool, len(defs))
	for i, def := range defs {
		c := a.newCheck(&svc, def, i, len(defs), now)
		if prev := a.local.checks[c.check.CheckID]; prev != nil {
			c.check.Status, c.check.Output = prev.check.Status, prev.check.Output
			c.deferUntil = prev.deferUntil // the held output still syncs on time
			c.inSync = sameCheck(prev.check, c.check)
		}
		a.local.checks[c.check.CheckID] = c
		kept[c.check.CheckID] = true
	}

	if replace {
		for id, c := range a.local.checks {
			if c.check.ServiceID == svc.ID && !kept[id] {
				delete(a.local.checks, id)
			}
		}
	}
}

func sameService(a, b api.AgentService) bool { return reflect.DeepEqual(a, b) }

func sameCheck(a, b api.HealthCheck) bool { return reflect.DeepEqual(a, b) }

// handleServiceDeregister serves PUT /v1/agent/service/deregister/:id.
func (a *Agent) handleServiceDeregister(w http.ResponseWriter, r *http.Request) error {
	id := strings.TrimPrefix(r.URL.Path, "/v1/agent/service/deregister/")
	return a.updateService(r, id, func(ls *localService) {
		a.local.removeService(ls.svc.ID)
	})
}

// handleServiceMaintenance serves PUT /v1/agent/service/maintenance/:id,
// which adds or removes the critical check _service_maintenance:<id>.
func (a *Agent) handleServiceMaintenance(w http.ResponseWriter, r *http.Request) error {
	id := strings.TrimPrefix(r.URL.Path, "/v1/agent/service/maintenance/")
	if id == "" {
		return badRequest("Missing service ID")
	}
	params := r.URL.Query()
	if _, ok := params["enable"]; !ok {
		return badRequest("Missing value for enable")
	}
	raw := params.Get("enable")
	enable, err := strconv.ParseBool(raw)
	if err != nil {
		return badRequest("Invalid value for enable: %q", raw)
	}
	return a.updateService(r, id, func(ls *localService) {
		checkID := api.ServiceMaintPrefix + id
		_, inMaint := a.local.checks[checkID]
		switch {
		case enable && !inMaint:
			reason := params.Get("reason")
			if reason == "" {
				reason = defaultMaintReason
			}
			a.local.checks[checkID] = &localCheck{check: api.HealthCheck{
				Node:        a.opts.NodeName,
				CheckID:     checkID,
				Name:        "Service Maintenance Mode",
				Status:      api.HealthCritical,
				Notes:       reason,
				ServiceID:   id,
				ServiceName: ls.svc.Service,
				ServiceTags: cloneTags(ls.svc.Tags),
			}}
			a.logger.Info("service entered maintenance mode", zap.String("service", id))
		case !enable && inMaint:
			delete(a.local.checks, checkID)
			a.logger.Info("service left maintenance mode", zap.String("service", id))
		}
	})
}

// updateService applies change to a local service that the request's token
// may write, then syncs. An unknown ID is Consul's 404.
func (a *Agent) updateService(r *http.Request, id string, change func(*localService)) error {
	authz, err := a.resolveToken(r)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	ls := a.local.services[id]
	if ls == nil {
		return notFound("Unknown service ID %q. Ensure that the service ID is passed, not the service name.", id)
	}
	if err := authz.vet("service:write", ls.svc.Service); err != nil {
		return err
	}
	change(ls)
	a.syncLocked()
	a.kickLoop()
	return nil
}

// validateServiceMeta applies Consul's limits on service meta, with its
// messages; keys are checked in sorted order so errors are stable.
func validateServiceMeta(meta map[string]string) error {
	if len(meta) > metaMaxPairs {
		return fmt.Errorf("Node metadata cannot contain more than %d key/value pairs", metaMaxPairs)
	}
	for _, key := range slices.Sorted(maps.Keys(meta)) {
		value := meta[key]
		if err := validateMetaPair(key, value); err != nil {
			return fmt.Errorf("Couldn't load metadata pair ('%s', '%s'): %w", key, value, err)
		}
	}
	return nil
}

func validateMetaPair(key, value string) error {
	switch {
	case key == "":
		return fmt.Errorf("Key cannot be blank")
	case !metaKeyFormat(key):
		return fmt.Errorf("Key contains invalid characters")
	case len(key) > metaKeyMaxLength:
		return fmt.Errorf("Key is too long (limit: %d characters)", metaKeyMaxLength)
	case strings.HasPrefix(key, metaReservedPrefix):
		return fmt.Errorf("Key prefix '%s' is reserved for internal use", metaReservedPrefix)
	case len(value) > metaValueMaxLength:
		return fmt.Errorf("Value is too long (limit: %d characters)", metaValueMaxLength)
	}
	return nil
}

// validateWeights is Consul's ValidateWeights.
func validateWeights(w *api.AgentWeights) error {
	switch {
	case w == nil:
		return nil
	case w.Passing < 1:
		return fmt.Errorf("Passing must be greater than 0")
	case w.Warning < 0:
		return fmt.Errorf("Warning must be greater or equal than 0")
	case w.Passing > 65535 || w.Warning > 65535:
		return fmt.Errorf("DNS Weight must be between 0 and 65535")
	}
	return nil
}

// isAnyAddress reports an unspecified address such as 0.0.0.0 or ::, which
// Consul refuses as a service address.
func isAnyAddress(addr string) bool {
	ip := net.ParseIP(strings.Trim(addr, "[]"))
	return ip != nil && ip.IsUnspecified()
}
