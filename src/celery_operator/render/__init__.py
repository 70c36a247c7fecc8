"""Pure builders: a spec (and its app) in, child manifests out."""
