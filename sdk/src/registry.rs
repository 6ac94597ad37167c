//! Built-in registration through `inventory`: each plugin crate submits a [`Registration`] with one of the
//! `register_*!` macros; the host collects them before `main`. (Registrations inside a cdylib go to the
//! cdylib's own collection, so cdylibs export through `export_plugins!` instead.)

use crate::{
    DataCachePolicy, Environment, KvCachePolicy, LoraTargetMapper, Loss, LrSchedule, Plugin, PluginError, PluginKind, Reward,
};

type Make<T> = fn(&toml::Table) -> Result<Box<T>, PluginError>;

/// Builds a plugin instance of one kind from its TOML table.
#[derive(Clone, Copy)]
pub enum Factory {
    Loss(Make<dyn Loss>),
    LrSchedule(Make<dyn LrSchedule>),
    LoraTargetMapper(Make<dyn LoraTargetMapper>),
    KvCachePolicy(Make<dyn KvCachePolicy>),
    DataCachePolicy(Make<dyn DataCachePolicy>),
    Reward(Make<dyn Reward>),
    Environment(Make<dyn Environment>),
}

impl Factory {
    pub fn kind(&self) -> PluginKind {
        match self {
            Factory::Loss(_) => PluginKind::Loss,
            Factory::LrSchedule(_) => PluginKind::LrSchedule,
            Factory::LoraTargetMapper(_) => PluginKind::LoraTargetMapper,
            Factory::KvCachePolicy(_) => PluginKind::KvCachePolicy,
            Factory::DataCachePolicy(_) => PluginKind::DataCachePolicy,
            Factory::Reward(_) => PluginKind::Reward,
            Factory::Environment(_) => PluginKind::Environment,
        }
    }
}

/// A built-in plugin: what `register_*!` submits.
pub struct Registration {
    pub name: &'static str,
    pub summary: &'static str,
    /// The crate that registered it, for messages about duplicates.
    pub source: &'static str,
    pub factory: Factory,
}

inventory::collect!(Registration);

/// Every registration linked into this binary, in unspecified order.
pub fn builtin_registrations() -> impl Iterator<Item = &'static Registration> {
    inventory::iter::<Registration>.into_iter()
}

macro_rules! constructors {
    ($($fn_name:ident, $variant:ident, $trait_:ident);* $(;)?) => {
        impl Registration {
            $(
                #[doc = concat!("A registration for a [`", stringify!($trait_), "`] plugin.")]
                pub const fn $fn_name<T: $trait_ + Plugin>(source: &'static str) -> Registration {
                    fn make<T: $trait_ + Plugin>(table: &toml::Table) -> Result<Box<dyn $trait_>, PluginError> {
                        Ok(Box::new(T::from_config(table)?))
                    }
                    Registration { name: T::NAME, summary: T::SUMMARY, source, factory: Factory::$variant(make::<T>) }
                }
            )*
        }
    };
}

constructors! {
    loss, Loss, Loss;
    schedule, LrSchedule, LrSchedule;
    lora_target_mapper, LoraTargetMapper, LoraTargetMapper;
    kv_cache_policy, KvCachePolicy, KvCachePolicy;
    data_cache_policy, DataCachePolicy, DataCachePolicy;
    reward, Reward, Reward;
    environment, Environment, Environment;
}

/// Registers a built-in [`Loss`](crate::Loss) plugin type.
#[macro_export]
macro_rules! register_loss {
    ($t:ty) => {
        $crate::__private::inventory::submit! { $crate::Registration::loss::<$t>(env!("CARGO_PKG_NAME")) }
    };
}

/// Registers a built-in [`LrSchedule`](crate::LrSchedule) plugin type.
#[macro_export]
macro_rules! register_schedule {
    ($t:ty) => {
        $crate::__private::inventory::submit! { $crate::Registration::schedule::<$t>(env!("CARGO_PKG_NAME")) }
    };
}

/// Registers a built-in [`LoraTargetMapper`](crate::LoraTargetMapper) plugin type.
#[macro_export]
macro_rules! register_lora_target_mapper {
    ($t:ty) => {
        $crate::__private::inventory::submit! {
            $crate::Registration::lora_target_mapper::<$t>(env!("CARGO_PKG_NAME"))
        }
    };
}

/// Registers a built-in [`KvCachePolicy`](crate::KvCachePolicy) plugin type.
#[macro_export]
macro_rules! register_kv_cache_policy {
    ($t:ty) => {
        $crate::__private::inventory::submit! {
            $crate::Registration::kv_cache_policy::<$t>(env!("CARGO_PKG_NAME"))
        }
    };
}

/// Registers a built-in [`DataCachePolicy`](crate::DataCachePolicy) plugin type.
#[macro_export]
macro_rules! register_data_cache_policy {
    ($t:ty) => {
        $crate::__private::inventory::submit! {
            $crate::Registration::data_cache_policy::<$t>(env!("CARGO_PKG_NAME"))
        }
    };
}

/// Registers a built-in [`Reward`](crate::Reward) plugin type.
#[macro_export]
macro_rules! register_reward {
    ($t:ty) => {
        $crate::__private::inventory::submit! { $crate::Registration::reward::<$t>(env!("CARGO_PKG_NAME")) }
    };
}

/// Registers a built-in [`Environment`](crate::Environment) plugin type.
#[macro_export]
macro_rules! register_environment {
    ($t:ty) => {
        $crate::__private::inventory::submit! { $crate::Registration::environment::<$t>(env!("CARGO_PKG_NAME")) }
    };
}
