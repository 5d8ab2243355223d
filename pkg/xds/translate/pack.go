package translate

import (
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

type validator interface{ ValidateAll() error }

// validate runs the protoc-gen-validate rules of m (all of them, not just the first failure).
func validate(m proto.Message) error {
	v, ok := m.(validator)
	if !ok {
		return fmt.Errorf("%T has no validation rules", m)
	}
	if err := v.ValidateAll(); err != nil {
		return fmt.Errorf("invalid %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	return nil
}

// pack validates m and packs it into an Any for a typed_config. Validation must happen here: once
// packed, ValidateAll of the enclosing message does not look inside.
func pack(m proto.Message) (*anypb.Any, error) {
	if err := validate(m); err != nil {
		return nil, err
	}
	a, err := anypb.New(m)
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	return a, nil
}
