"""VP-SDE / DDPM mathematics, samplers and likelihoods; knows nothing of networks."""
