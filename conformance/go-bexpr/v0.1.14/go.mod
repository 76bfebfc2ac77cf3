module kfp-exit-handler/conformance/go-bexpr/v0.1.14

go 1.23

require github.com/hashicorp/go-bexpr v0.1.14

require (
	github.com/mitchellh/mapstructure v1.4.1 // indirect
	github.com/mitchellh/pointerstructure v1.2.1 // indirect
)
