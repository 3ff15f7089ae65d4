"""vpnjail: one isolated strongSwan IPsec client per VPN profile."""

__version__ = "0.1.0"
