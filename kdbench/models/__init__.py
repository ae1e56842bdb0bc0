"""CIFAR and ImageNet model zoo."""
