// Module consulbin exists only to build the Consul server binary that the
// tests run (consul agent -dev). It is a module of its own so that Consul's
// hundreds of dependencies never enter the plugin's module graph.
module consulbin

go 1.26

require github.com/hashicorp/consul v1.14.11
